"""An upstream's answer on its way back: read whole, or relayed as a stream event by
event, with the usage read on the way and every failure told in OpenAI's shape."""

from __future__ import annotations

import contextlib
import logging

import aiohttp
from aiohttp import web

from .context import RequestContext
from .errors import GatewayError, Shape, normalise_upstream_error
from .outgoing import read_within
from .state import LIVE
from .streaming import IdleWatch, SseRelay, error_event
from .usage import parse_body, usage_of

log = logging.getLogger("llmgw.proxy")

_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "retry-after-ms")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_OVERRUN = (
    "The model server generated more than this request's max_tokens allows ({} token "
    "chunks); the stream was cut. You are charged for what was generated."
)


def upstream_failed(ctx: RequestContext, message: str, exc: BaseException) -> GatewayError:
    """A 502 for a failure of the upstream's: its details (its internal URL among them)
    are for the log; the client is told what happened, not where."""
    log.warning("upstream %s failed request %s: %s", ctx.upstream, ctx.request_id, exc or "timeout")
    return GatewayError(502, message, code="upstream_error")


async def answer(
    ctx: RequestContext,
    response: aiohttp.ClientResponse,
    read_timeout: float,
    read_usage: bool = True,
    shape: Shape = "openai",
) -> web.Response:
    """A whole (non-streamed) answer: passed on, its usage read, an error normalised
    (into the route's `shape`)."""
    try:
        data = await read_within(response.content, response.read, read_timeout)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_failed(ctx, "The model server's answer broke off.", exc) from None
    ctx.mark_first_byte()
    headers = _response_headers(response)
    if response.status < 400:
        if read_usage:
            parsed = parse_body(data)
            ctx.usage = usage_of(parsed)
            if isinstance(parsed, dict) and parsed.get("object") == "response":
                made = parsed.get("id")
                ctx.response_id = made if isinstance(made, str) else None
        return web.Response(status=response.status, body=data, headers=headers)
    data, unreadable = normalise_upstream_error(response.status, data, shape)
    if unreadable is not None:
        log.warning(
            "upstream %s answered request %s with status %d: %r",
            ctx.upstream,
            ctx.request_id,
            response.status,
            unreadable,
        )
    headers["Content-Type"] = "application/json"
    return web.Response(status=response.status, body=data, headers=headers)


async def relay_stream(
    request: web.Request,
    ctx: RequestContext,
    response: aiohttp.ClientResponse,
    relay: SseRelay,
    idle: float,
    ceiling: int | None = None,
) -> web.StreamResponse:
    """Relay an event stream as it arrives; however it ends, the client's stream ends
    properly (with an error event when the upstream failed, or generated more than
    `ceiling` token chunks: more than its max_tokens allows)."""
    out = web.StreamResponse(status=200, headers=_response_headers(response) | _SSE_HEADERS)
    await out.prepare(request)
    live, key_id = request.app[LIVE], ctx.key.id if ctx.key else 0
    live.stream_opened(key_id)
    try:
        await _relay(out, ctx, response, relay, idle, ceiling)
    finally:
        live.stream_closed(key_id)
    return out


def _response_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        name: value
        for name in _FORWARDED_RESPONSE_HEADERS
        if (value := response.headers.get(name)) is not None
    }


async def _relay(
    out: web.StreamResponse,
    ctx: RequestContext,
    response: aiohttp.ClientResponse,
    relay: SseRelay,
    idle: float,
    ceiling: int | None,
) -> None:
    # Closing the upstream response when it goes quiet ends the loop below (with an
    # error, or at the end of what arrived); the watch then tells why.
    watch = IdleWatch(idle, response.close)
    try:
        async for chunk in response.content.iter_any():
            if data := relay.feed(chunk):
                ctx.mark_first_byte()
                watch.paused = True  # a slow client is not an idle upstream
                if relay.done:  # settled before the client has the end
                    await ctx.settle(200)
                await out.write(data)
                watch.resume()
            else:
                watch.touch()
            if relay.ended:  # the upstream sent an error: nothing after it is relayed
                response.close()
                break
            if ceiling is not None and relay.completion_events > ceiling:
                response.close()  # vLLM stops generating when its connection closes
                await _cut(out, ctx, relay, 502, _OVERRUN.format(ceiling), "max_tokens_exceeded")
                break
        if not watch.expired and not ctx.cut and (tail := relay.finish()):
            if not relay.ended:
                await ctx.settle(200)
            await out.write(tail)
    except aiohttp.ClientError as exc:
        if not watch.expired:
            error = upstream_failed(ctx, "The model server broke off the stream.", exc)
            await _cut(out, ctx, relay, 502, error.message, "upstream_error")
    finally:
        watch.cancel()
    if watch.expired:
        await _cut(
            out,
            ctx,
            relay,
            504,
            f"The model server sent nothing for {idle:g} s.",
            "upstream_timeout",
        )
    if relay.error_status is not None:
        ctx.status, ctx.cut = relay.error_status, True
    with contextlib.suppress(ConnectionError):
        await out.write_eof()


async def _cut(
    out: web.StreamResponse,
    ctx: RequestContext,
    relay: SseRelay,
    status: int,
    message: str,
    code: str,
) -> None:
    """End a stream that has already begun with an error event (in its API's words):
    its status is sent."""
    ctx.status, ctx.cut = status, True
    with contextlib.suppress(ConnectionError):
        await out.write(error_event(message, "server_error", code, relay.events))
