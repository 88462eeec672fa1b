"""The request path of the API routes, top to bottom.

1. Authenticate the key (401s; nothing is charged).
2. Read and check the body (`outgoing`: 400, 403, 404, 408, 413; nothing is charged).
3. Admit the request under every limit of its key (429 naming the limit), reserving
   its demand in tokens; settle the reservation with the tokens it used once the
   answer is complete (before the client has its last byte, so a client waiting for
   one request to end before the next is never refused for concurrency), or however
   else it ends.
4. Forward it to the best upstream that serves its model, failing over to the next one
   while nothing has reached an upstream; give the request back if none could be
   reached.
5. Pass the answer back, whole or as a stream (`relay`).

Only the routes of `routes.ROUTES` exist; everything else is a 404 that never reaches
vLLM (its development routes in particular).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from .context import CLIENT_CLOSED, RequestContext
from .errors import GatewayError
from .keys import KEY_PREFIX, ApiKey, presented_key
from .limits import (
    NOTHING,
    Demand,
    LimiterUnavailable,
    LimitExceeded,
    Limits,
    Reservation,
    limits_for,
    tier_of,
)
from .outgoing import Outgoing, read_outgoing, read_plain
from .relay import answer, relay_stream, upstream_failed
from .routes import ROUTES, Route
from .state import (
    CLIENT,
    CLOCK,
    CONTEXT,
    KEYS,
    LIMITER,
    METRICS,
    SETTINGS,
    STORED_RESPONSES,
    UPSTREAMS,
)
from .streaming import SseRelay
from .upstreams import Upstream

log = logging.getLogger("llmgw.proxy")

# Request headers worth passing on; everything else (the client's key above all) stays.
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent")


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(route))


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request[CONTEXT]
        ctx.counts_tokens = route.usage != "none"
        ctx.endpoint = route.path
        key = _authenticate(request, ctx)
        limits = limits_for(key, request.app[SETTINGS])
        owner: Upstream | None = None
        try:
            if request.query_string:
                _refuse_key_in_query(request.query_string)
            if route.kind == "stored_response":
                owner = _owner(request, key)
                outgoing = await read_plain(request)
            elif route.kind == "models":
                outgoing = None
            else:
                outgoing = await read_outgoing(request, ctx, route, key, limits)
        except GatewayError:
            await _show_windows(request, ctx, key, limits)  # an authenticated answer
            raise
        demand = NOTHING if outgoing is None else outgoing.demand
        async with _Admitted(request, ctx, key.id, limits, demand) as reservation:
            if outgoing is None:
                return await _list_models(request, ctx, key, reservation)
            outgoing.grant(reservation.decision.granted)
            return await _forward(request, ctx, route, outgoing, reservation, owner)

    handle.__name__ = f"proxy_{route.kind}"
    return handle


def _authenticate(request: web.Request, ctx: RequestContext) -> ApiKey:
    headers = request.headers
    presented = presented_key(headers.getall("Authorization", ()), headers.getall("x-api-key", ()))
    ctx.key = request.app[KEYS].authenticate(presented, request.app[CLOCK].wall())
    return ctx.key


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


class _Admitted:
    """The key's limits admit the request (or 429), and the request holds what it was
    granted until the block is left; leaving settles it, if nothing did before."""

    __slots__ = ("_ctx", "_demand", "_key_id", "_limits", "_request")

    def __init__(
        self, request: web.Request, ctx: RequestContext, key_id: int, limits: Limits, demand: Demand
    ) -> None:
        self._request, self._ctx, self._key_id = request, ctx, key_id
        self._limits, self._demand = limits, demand

    async def __aenter__(self) -> Reservation:
        app, ctx = self._request.app, self._ctx
        try:
            reservation = await app[LIMITER].admit(self._key_id, self._limits, self._demand)
        except LimitExceeded as exc:
            ctx.rate_headers = dict(exc.headers())
            app[METRICS].refusals[exc.kind] += 1
            raise GatewayError(429, str(exc), type_=exc.kind, code=exc.code) from None
        except LimiterUnavailable as exc:  # Redis is gone and [limits] on_redis_error = "deny"
            raise GatewayError(
                503, str(exc), code="limiter_unavailable", headers={"Retry-After": "1"}
            ) from None
        ctx.reservation = reservation
        ctx.rate_headers = reservation.decision.headers()
        return reservation

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # The status the request ends with, as the accounting will record it.
        if exc is None:
            status = self._ctx.status or 200
        elif isinstance(exc, GatewayError):
            status = exc.status
        elif isinstance(exc, asyncio.CancelledError | ConnectionError):
            status = CLIENT_CLOSED
        else:
            status = 500
        await self._ctx.settle(status)


def _owner(request: web.Request, key: ApiKey) -> Upstream:
    """The upstream that made the response the path names, if this key made it; a 404
    otherwise (in vLLM's words), so no key learns of another's responses."""
    response_id = request.match_info["response_id"]
    url = request.app[STORED_RESPONSES].upstream_of(response_id, key.id)
    upstream = next((u for u in request.app[UPSTREAMS].upstreams if u.url == url), None)
    if upstream is None:
        raise GatewayError(
            404,
            f"Response with id '{response_id}' not found.",
            type_="invalid_request_error",
            param="response_id",
        )
    return upstream


async def _show_windows(
    request: web.Request, ctx: RequestContext, key: ApiKey, limits: Limits
) -> None:
    """The limit headers of a request refused before admission (which took nothing);
    none when the limits cannot be read (Redis gone, and no local count to show)."""
    with contextlib.suppress(LimiterUnavailable):
        ctx.rate_headers = (await request.app[LIMITER].windows(key.id, limits)).headers()


class _Unreachable(Exception):
    """Nothing reached the upstream: the next one may be tried."""


class _Refused(Exception):
    """The upstream answered 502 or 503 before anything was sent to the client: the
    next one may be tried."""


# What an upstream answers when it cannot take a request now (vLLM's 503 when its
# engine is starting, sleeping or overloaded; a 502 from a proxy in front of it).
_TRY_ANOTHER = (502, 503)


async def _forward(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    outgoing: Outgoing,
    reservation: Reservation,
    owner: Upstream | None = None,
) -> web.StreamResponse:
    pool = request.app[UPSTREAMS]
    priority = tier_of(ctx.key, request.app[SETTINGS]).priority if ctx.key else 0
    # A stored response lives in the upstream that made it: no other will do.
    if owner is not None:
        candidates = [owner]
    else:
        candidates = pool.candidates(ctx.model, request.headers, outgoing.payload)
    for i, upstream in enumerate(candidates):
        ctx.upstream = upstream.url
        body = outgoing.body(priority if upstream.priority_scheduling else None)
        try:
            with pool.lease(upstream, ctx.model):
                return await _exchange(
                    request, ctx, route, upstream, body, outgoing, last=i == len(candidates) - 1
                )
        except _Unreachable as exc:
            upstream.mark_down(str(exc))
            ctx.upstream = None
        except _Refused:
            ctx.upstream = None
    ctx.rate_headers = (await reservation.refund()).headers()
    raise GatewayError(502, "No model server is reachable right now.", code="upstream_unavailable")


async def _exchange(
    request: web.Request,
    ctx: RequestContext,
    route: Route,
    upstream: Upstream,
    body: bytes,
    outgoing: Outgoing,
    *,
    last: bool = True,
) -> web.StreamResponse:
    """One request to one upstream, and its answer back to the client."""
    server = request.app[SETTINGS].server
    # The route's own path (never the client's spelling of it, its parameters quoted),
    # and the query as sent.
    query = request.rel_url.raw_query_string
    path = route.path.format_map(
        {name: quote(value, safe="") for name, value in request.match_info.items()}
    )
    target = URL(upstream.url + path + (f"?{query}" if query else ""), encoded=True)
    with _upstream_errors(ctx, server.upstream_timeout):
        async with asyncio.timeout(server.upstream_timeout):
            response = await request.app[CLIENT].request(
                route.method,
                target,
                data=body,
                headers=_upstream_headers(request, upstream, ctx.request_id),
            )
    if response.status in _TRY_ANOTHER and not last:
        _pass_over(request, ctx, upstream, response)
    try:
        # Whatever the request said: an event stream is relayed and accounted as one
        # (never buffered whole and read for a usage it does not have).
        if response.content_type == "text/event-stream":
            ctx.relay = SseRelay(
                strip_usage=outgoing.strip_usage,
                role_chunk=route.kind == "chat",
                events=route.events,
            )
            return await relay_stream(
                request, ctx, response, ctx.relay, server.stream_idle_timeout, outgoing.ceiling
            )
        whole = await answer(
            ctx, response, server.stream_idle_timeout, route.usage == "reported", route.errors
        )
        await ctx.settle(whole.status)
        return whole
    except BaseException:
        # The client went away or the handler failed: closing (not releasing) the
        # connection is what makes vLLM abort the generation.
        response.close()
        raise
    finally:
        response.release()  # back to the pool if complete, else closed
        if route.kind == "responses":
            _remember_response(request, ctx, upstream)


def _pass_over(
    request: web.Request, ctx: RequestContext, upstream: Upstream, response: aiohttp.ClientResponse
) -> NoReturn:
    """Leave an upstream that cannot take the request for the next one (never once the
    client has a byte: this is before anything was sent)."""
    log.info(
        "upstream %s answered request %s with %d: trying the next",
        upstream.url,
        ctx.request_id,
        response.status,
    )
    if response.status == 503:
        request.app[UPSTREAMS].mark_busy(upstream)
    response.close()  # its error body is not wanted, nor is its connection worth keeping
    raise _Refused


def _remember_response(request: web.Request, ctx: RequestContext, upstream: Upstream) -> None:
    response_id = ctx.response_id or (ctx.relay.response_id if ctx.relay else None)
    if response_id is not None and ctx.key is not None:
        request.app[STORED_RESPONSES].remember(response_id, upstream.url, ctx.key.id)


@contextlib.contextmanager
def _upstream_errors(ctx: RequestContext, timeout: float) -> Iterator[None]:
    """aiohttp's failures while sending a request, as the gateway's (the one place that
    maps them, as httpx's `map_httpcore_exceptions` does)."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _Unreachable(str(exc)) from None
    except TimeoutError:
        raise GatewayError(
            504, f"The model server did not answer within {timeout:g} s.", code="upstream_timeout"
        ) from None
    except aiohttp.ClientError as exc:
        raise upstream_failed(ctx, "The model server failed to answer.", exc) from None


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


async def _list_models(
    request: web.Request, ctx: RequestContext, key: ApiKey, reservation: Reservation
) -> web.Response:
    """The models of the healthy upstreams (from the prober's lists: no upstream is
    asked), limited to the key's."""
    pool = request.app[UPSTREAMS]
    if not pool.any_healthy:
        ctx.rate_headers = (await reservation.refund()).headers()
        raise GatewayError(
            502, "No model server is reachable right now.", code="upstream_unavailable"
        )
    ctx.mark_first_byte()
    data = [card for card in pool.model_cards() if key.may_use(card["id"])]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )
