"""`GET /stats` and `GET /stats/stream`: the live view of the last few minutes.

`/stats` answers one snapshot (see `LiveStats.snapshot`) with what the gateway knows
besides: requests in flight, each busy key's owner, tier and remaining budget, and the
upstreams. `/stats/stream` sends the same as server-sent events, one at once and then
one at every whole second of the wall clock, until the client goes away or the door
shuts down: `end_streams_on_shutdown` makes a door's shutdown end its open streams
first, since a stream that never ends would otherwise hold the shutdown for its full
timeout (60 s on the admin socket, the grace period on the public port).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from ..api_types import BusyKey, KeyActivity, LimitsView, Stats, StatsTotals
from ..config import Settings
from ..keys import ApiKey
from ..limits import Limiter, LimiterUnavailable, limits_for
from ..state import KEYS, LEDGER, LIMITER, LIVE, METRICS, SETTINGS, UPSTREAMS
from .common import int_query, json_response

routes = web.RouteTableDef()

TOP_KEYS = 50
# A client that cannot take one snapshot in this long is dropped, so a stalled reader
# neither piles up buffered snapshots nor keeps a shutdown waiting.
WRITE_TIMEOUT = 5.0
# Ticks land just after the second turns, so the snapshot's newest slot is the new one.
_TICK_OFFSET = 0.005
# Set when a door shuts down: its open streams end.
_CLOSING = web.AppKey("stats_streams_closing", asyncio.Event)
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx in front would otherwise hold the events back
}


def end_streams_on_shutdown(app: web.Application) -> None:
    """Make `app`'s shutdown end its open `/stats/stream` responses (before it waits
    for the requests in flight to finish)."""
    app[_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    app[_CLOSING].set()


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    return json_response(await snapshot(request, _seconds(request)))


@routes.get("/stats/stream")
async def stats_stream(request: web.Request) -> web.StreamResponse:
    seconds = _seconds(request)
    # A door set up without `end_streams_on_shutdown` gets an event nothing sets.
    closing = request.app.get(_CLOSING) or asyncio.Event()
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    try:
        while True:
            event = b"data: " + orjson.dumps(await snapshot(request, seconds)) + b"\n\n"
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(event)
            if closing.is_set() or await _closing_before_next_tick(closing):
                break
    except (ConnectionError, TimeoutError):
        return response  # the client went away or stopped reading
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def snapshot(request: web.Request, seconds: int) -> Stats:
    cfg = request.config_dict
    live = cfg[LIVE].snapshot(seconds, top=TOP_KEYS)
    keys, limiter, settings = cfg[KEYS], cfg[LIMITER], cfg[SETTINGS]
    return Stats(
        replica=settings.replica,
        now=live["now"],
        window=live["window"],
        seconds=live["seconds"],
        start=live["start"],
        total=StatsTotals(**live["total"], in_flight=cfg[METRICS].in_flight),
        rates=live["rates"],
        keys_active=live["keys_active"],
        keys=[
            await _busy_key(row, keys.get(row["key_id"]), limiter, settings) for row in live["keys"]
        ],
        upstreams=cfg[UPSTREAMS].status(),
        ledger=cfg[LEDGER].status(),
    )


def _seconds(request: web.Request) -> int:
    window = request.config_dict[LIVE].window
    return int_query(request, "seconds", window, 1, window)


async def _closing_before_next_tick(closing: asyncio.Event) -> bool:
    """Wait for the next tick; True if the door began to shut down first."""
    try:
        async with asyncio.timeout(_until_next_tick(time.time())):
            await closing.wait()
    except TimeoutError:
        return False
    return True


def _until_next_tick(now: float) -> float:
    """Seconds to the next whole second at least half a second away, so the first
    tick after the immediate snapshot does not follow it at once."""
    wait = 1.0 - now % 1.0 + _TICK_OFFSET
    return wait + 1.0 if wait < 0.5 else wait


async def _busy_key(
    row: KeyActivity, key: ApiKey | None, limiter: Limiter, settings: Settings
) -> BusyKey:
    """Who the key is and what is left of its limits; all null for a deleted key."""
    if key is None:
        return BusyKey(**row, key_prefix=None, user_id=None, tier=None, limits=None)
    limits: LimitsView | None
    try:
        limits = (await limiter.windows(key.id, limits_for(key, settings))).view()
    except LimiterUnavailable:  # Redis gone, and the policy is to refuse: nothing to show
        limits = None
    return BusyKey(
        **row, key_prefix=key.key_prefix, user_id=key.user_id, tier=key.tier, limits=limits
    )
