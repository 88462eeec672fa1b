"""The `/v1/*` request path: auth, limits, body checks, forwarding, relaying.

Only the routes in `ROUTES` exist; everything else under `/v1` is a 404 that never
reaches vLLM (its development routes in particular). The body goes upstream as the
bytes received, with one exception: a streaming chat or text completion is made to
ask for the usage chunk, which is removed again on the way back if the client did not
ask for it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from .context import RequestContext
from .errors import GatewayError, normalise_upstream_error
from .keys import KEY_PREFIX, ApiKey, presented_key
from .limits import Decision, limits_for
from .state import CLIENT, CONTEXT, KEYS, LIMITER, LIVE, SETTINGS, UPSTREAMS
from .streaming import IdleWatch, SseRelay, error_event
from .upstreams import Upstream
from .usage import usage_from_body

RouteKind = Literal["chat", "completion", "embedding", "models"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    kind: RouteKind


ROUTES = (
    Route("POST", "/v1/chat/completions", "chat"),
    Route("POST", "/v1/completions", "completion"),
    Route("POST", "/v1/embeddings", "embedding"),
    Route("GET", "/v1/models", "models"),
)
_STREAMABLE = frozenset({"chat", "completion"})
# Request headers worth passing on; everything else (the client's key above all) stays.
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent")
_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "retry-after-ms")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_USAGE_OPTIONS = b',"stream_options":{"include_usage":true}}'
# What JSON calls each type, for OpenAI's "expected a boolean, but got a string" message.
_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", list: "an array"}

log = logging.getLogger("llmgw.proxy")


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(route))


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request[CONTEXT]
        key = _authorize(request, ctx)
        if request.query_string:
            _refuse_key_in_query(request.query_string)
        if route.kind == "models":
            return await _list_models(request, ctx, key)
        body, stream, strip_usage = await _read_request(request, ctx, route, key)
        return await _forward(request, ctx, route, body, stream, strip_usage)

    handle.__name__ = f"proxy_{route.kind}"
    return handle


def _authorize(request: web.Request, ctx: RequestContext) -> ApiKey:
    app = request.app
    headers = request.headers
    presented = presented_key(headers.getall("Authorization", ()), headers.getall("x-api-key", ()))
    key = app[KEYS].authenticate(presented, time.time())
    ctx.key = key
    limits = limits_for(key, app[SETTINGS])
    decision = app[LIMITER].acquire(key.id, limits)
    ctx.rate_headers = decision.headers()
    if not decision.allowed:
        window, limit = (
            ("minute", limits.per_minute)
            if decision.minute.remaining == 0
            else ("hour", limits.per_hour)
        )
        raise GatewayError(
            429,
            f"Rate limit reached for requests per {window}: limit {limit}. "
            f"Please try again in {math.ceil(decision.retry_after)}s.",
            type_="requests",
            code="rate_limit_exceeded",
        )
    return key


def _refuse_key_in_query(query: str) -> None:
    """The query goes upstream as sent, and URLs end up in access logs on the way (vLLM's
    among them): a key there would be written down. Refused, so the client learns."""
    if KEY_PREFIX in query:  # (percent-decoded)
        raise GatewayError(
            400,
            "Do not put an API key in the URL: send it in an Authorization header "
            "(Authorization: Bearer YOUR_KEY).",
            code="api_key_in_url",
        )


async def _read_request(
    request: web.Request, ctx: RequestContext, route: Route, key: ApiKey
) -> tuple[bytes, bool, bool]:
    """The body to send upstream, whether it streams, and whether to strip usage."""
    server = request.app[SETTINGS].server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        # A whole-body deadline: a client trickling its body must not hold a connection
        # (and a handler) for as long as it likes.
        body = await _read_within(request.content, request.read, server.body_timeout)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {server.body_timeout:g} s.",
            code="request_timeout",
        ) from None
    except web.RequestPayloadError:
        # Found only once the handler reads: a body its Content-Encoding cannot decode,
        # or chunked framing that breaks off mid-body. The client's fault, not ours.
        raise GatewayError(
            400,
            "The request body could not be read: its content or transfer encoding is malformed.",
            code="malformed_request",
        ) from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    ctx.payload = payload
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayError(400, "'model' must be a string.", param="model")
    if model is not None and KEY_PREFIX in model:
        # The model goes into the ledger and the access log: a key pasted there would be
        # written down in plain text.
        raise GatewayError(
            400,
            "'model' contains an API key: send the key in an Authorization header and "
            "the model's name in 'model'.",
            code="api_key_in_body",
            param="model",
        )
    ctx.model = model
    if key.allowed_models is not None and model not in key.allowed_models:
        wanted = "a request without a model" if model is None else f"the model {model!r}"
        raise GatewayError(
            403,
            f"This API key may not use {wanted}; it may use: {', '.join(key.allowed_models)}.",
            type_="permission_error",
            code="model_not_allowed",
            param="model",
        )
    if route.kind not in _STREAMABLE or not _wants_stream(payload.get("stream")):
        return body, False, False
    body, strip_usage = _ask_for_usage(body, payload)
    return body, True, strip_usage


def _wants_stream(stream: Any) -> bool:
    """Whether the request asks for a stream. vLLM reads `stream` leniently (pydantic
    takes "yes", "true", 1 and "1" for true); the gateway, like OpenAI's API, takes only
    a JSON boolean (or null), so it never mistakes a stream for an answer."""
    if stream is None or isinstance(stream, bool):
        return stream is True
    kind = _JSON_TYPES.get(type(stream), "an object")
    raise GatewayError(
        400,
        f"Invalid type for 'stream': expected a boolean, but got {kind} instead.",
        code="invalid_type",
        param="stream",
    )


async def _read_within(
    stream: aiohttp.StreamReader, read: Callable[[], Awaitable[bytes]], seconds: float
) -> bytes:
    """`read()`, within `seconds`. A small body usually arrives with its headers: when
    all of it is in, there is nothing to wait for, and a deadline would only cost timers
    on every request."""
    if stream.is_eof():
        return await read()
    async with asyncio.timeout(seconds):
        return await read()


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes).",
        code="request_too_large",
    )


def _ask_for_usage(body: bytes, payload: dict[str, Any]) -> tuple[bytes, bool]:
    """The body with `stream_options.include_usage` on; and whether the client lacked it.

    When the client did not send `stream_options`, the option is spliced onto the end
    of the received bytes, so everything it did send goes upstream unchanged.
    """
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, False
    if "stream_options" not in payload:
        end = body.rstrip().rfind(b"}")
        return body[:end] + _USAGE_OPTIONS, True
    if options is not None and not isinstance(options, dict):
        return body, False  # malformed: let vLLM reject it in its own words
    # Continuous usage only applies with include_usage; the client would not have seen it.
    patched = {**(options or {}), "include_usage": True, "continuous_usage_stats": False}
    return orjson.dumps({**payload, "stream_options": patched}), True


def _upstream_headers(request: web.Request, upstream: Upstream, request_id: str) -> dict[str, str]:
    headers = {
        name: value
        for name in _FORWARDED_REQUEST_HEADERS
        if (value := request.headers.get(name)) is not None
    }
    headers["X-Request-Id"] = request_id
    headers["Accept-Encoding"] = "identity"  # the relay reads the stream as text
    headers.update(upstream.auth_headers())
    return headers


async def _forward(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    body: bytes,
    stream: bool,
    strip_usage: bool,
) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS].server
    # The route's own path (never the client's spelling of it), and the query as sent.
    query = request.rel_url.raw_query_string
    target = route.path + (f"?{query}" if query else "")
    for upstream in app[UPSTREAMS].candidates(ctx.model):
        upstream.in_flight += 1
        ctx.upstream = upstream.url
        try:
            try:
                async with asyncio.timeout(settings.upstream_timeout):
                    response = await app[CLIENT].request(
                        route.method,
                        URL(upstream.url + target, encoded=True),
                        data=body,
                        headers=_upstream_headers(request, upstream, ctx.request_id),
                    )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                upstream.mark_down(str(exc))
                ctx.upstream = None
                continue  # nothing reached this upstream: try the next
            except TimeoutError:
                raise GatewayError(
                    504,
                    f"The model server did not answer within {settings.upstream_timeout:g} s.",
                    code="upstream_timeout",
                ) from None
            except aiohttp.ClientError as exc:
                raise _upstream_failed(ctx, "The model server failed to answer.", exc) from None
            try:
                # Whatever the request said: an event stream is relayed and accounted
                # as one (never buffered whole and read for a usage it does not have).
                if response.content_type == "text/event-stream":
                    relay = SseRelay(strip_usage=strip_usage, role_chunk=route.kind == "chat")
                    ctx.relay = relay
                    return await _relay_stream(request, ctx, response, relay)
                return await _answer(ctx, response, settings.stream_idle_timeout)
            except BaseException:
                # The client went away or the handler failed: closing (not releasing)
                # the connection is what makes vLLM abort the generation.
                response.close()
                raise
            finally:
                response.release()  # back to the pool if complete, else closed
        finally:
            upstream.in_flight -= 1
    if ctx.key is not None:
        _refund(request, ctx, ctx.key)
    raise GatewayError(502, "No model server is reachable right now.", code="upstream_unavailable")


def _refund(request: web.Request, ctx: RequestContext, key: ApiKey) -> None:
    """Give back the request no upstream served; its headers say what is left after."""
    app = request.app
    limits = limits_for(key, app[SETTINGS])
    app[LIMITER].refund(key.id)
    minute, hour = app[LIMITER].peek(key.id, limits)
    ctx.rate_headers = Decision(True, 0.0, minute, hour).headers()


def _upstream_failed(ctx: RequestContext, message: str, exc: BaseException) -> GatewayError:
    """A 502 for a failure of the upstream's: its details (its internal URL among them)
    are for the log; the client is told what happened, not where."""
    log.warning("upstream %s failed request %s: %s", ctx.upstream, ctx.request_id, exc or "timeout")
    return GatewayError(502, message, code="upstream_error")


async def _answer(
    ctx: RequestContext, response: aiohttp.ClientResponse, read_timeout: float
) -> web.Response:
    try:
        data = await _read_within(response.content, response.read, read_timeout)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _upstream_failed(ctx, "The model server's answer broke off.", exc) from None
    ctx.mark_first_byte()
    if response.status >= 400:
        data, unreadable = normalise_upstream_error(response.status, data)
        if unreadable is not None:
            log.warning(
                "upstream %s answered request %s with status %d: %r",
                ctx.upstream,
                ctx.request_id,
                response.status,
                unreadable,
            )
    else:
        ctx.usage = usage_from_body(data)
    headers = _response_headers(response)
    if response.status >= 400:
        headers["Content-Type"] = "application/json"
    return web.Response(status=response.status, body=data, headers=headers)


def _response_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        name: value
        for name in _FORWARDED_RESPONSE_HEADERS
        if (value := response.headers.get(name)) is not None
    }


async def _relay_stream(
    request: web.Request,
    ctx: RequestContext,
    response: aiohttp.ClientResponse,
    relay: SseRelay,
) -> web.StreamResponse:
    out = web.StreamResponse(status=200, headers=_response_headers(response) | _SSE_HEADERS)
    await out.prepare(request)
    live, key_id = request.app[LIVE], ctx.key.id if ctx.key else 0
    live.stream_opened(key_id)
    try:
        return await _relay(
            out, ctx, response, relay, request.app[SETTINGS].server.stream_idle_timeout
        )
    finally:
        live.stream_closed(key_id)


async def _relay(
    out: web.StreamResponse,
    ctx: RequestContext,
    response: aiohttp.ClientResponse,
    relay: SseRelay,
    idle: float,
) -> web.StreamResponse:
    # Closing the upstream response when it goes quiet ends the loop below (with an
    # error, or at the end of what arrived); the watch then tells why.
    watch = IdleWatch(idle, response.close)
    try:
        async for chunk in response.content.iter_any():
            if data := relay.feed(chunk):
                ctx.mark_first_byte()
                watch.paused = True  # a slow client is not an idle upstream
                await out.write(data)
                watch.resume()
            else:
                watch.touch()
            if relay.ended:  # the upstream sent an error: nothing after it is relayed
                response.close()
                break
        if not watch.expired and (tail := relay.finish()):
            await out.write(tail)
    except aiohttp.ClientError as exc:
        if not watch.expired:
            error = _upstream_failed(ctx, "The model server broke off the stream.", exc)
            await _cut(out, ctx, 502, error.message, "upstream_error")
    finally:
        watch.cancel()
    if watch.expired:
        await _cut(
            out, ctx, 504, f"The model server sent nothing for {idle:g} s.", "upstream_timeout"
        )
    if relay.error_status is not None:
        ctx.status, ctx.cut = relay.error_status, True
    with contextlib.suppress(ConnectionError):
        await out.write_eof()
    return out


async def _cut(
    out: web.StreamResponse, ctx: RequestContext, status: int, message: str, code: str
) -> None:
    """End a stream that has already begun with an error event: its status is sent."""
    ctx.status, ctx.cut = status, True
    with contextlib.suppress(ConnectionError):
        await out.write(error_event(message, "server_error", code))


async def _list_models(request: web.Request, ctx: RequestContext, key: ApiKey) -> web.Response:
    """The models of every reachable upstream, as one list, limited to the key's."""
    app = request.app
    upstreams = app[UPSTREAMS].upstreams
    results = await asyncio.gather(
        *(_fetch_models(app, u) for u in upstreams), return_exceptions=True
    )
    seen: dict[str, Any] = {}
    answered = []
    for upstream, result in zip(upstreams, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, aiohttp.ClientConnectorError):
                upstream.mark_down(str(result))
            continue
        answered.append(upstream.url)
        for model in result:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                seen.setdefault(model["id"], model)
    if not answered:
        _refund(request, ctx, key)
        raise GatewayError(
            502, "No model server is reachable right now.", code="upstream_unavailable"
        )
    ctx.upstream = ",".join(answered)
    ctx.mark_first_byte()
    allowed = key.allowed_models
    data = [m for name, m in seen.items() if allowed is None or name in allowed]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def _fetch_models(app: web.Application, upstream: Upstream) -> list[Any]:
    async with asyncio.timeout(app[SETTINGS].server.upstream_timeout):
        async with app[CLIENT].get(
            f"{upstream.url}/v1/models", headers=upstream.auth_headers()
        ) as response:
            response.raise_for_status()
            listing = await response.json()
    data = listing.get("data") if isinstance(listing, dict) else None
    return data if isinstance(data, list) else []
