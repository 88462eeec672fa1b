"""`GET /health` and `GET /metrics`: what operators and load balancers watch.

`/health` answers 200 while the gateway can serve (at least one healthy upstream, not
shutting down) and 503 otherwise; its body says what is wrong, database, ledger, limits
and key table included, so one request tells an operator where to look. It asks the
database nothing: it reports what the store's watcher last saw, when the ledger last
wrote and the key table last read the key change log; nor Redis: the limiter knows
whether its last call was answered.
"""

from __future__ import annotations

import time
from typing import Literal

import orjson
from aiohttp import web

from .api_types import DatabaseStatus, Health, LimitsStatus
from .state import KEY_SYNC, LEDGER, LIMITER, METRICS, SETTINGS, STORE, UPSTREAMS


async def health(request: web.Request) -> web.Response:
    cfg = request.config_dict
    pool, ledger, metrics = cfg[UPSTREAMS], cfg[LEDGER], cfg[METRICS]
    # What the store last saw: a load balancer's probes never queue behind a write.
    database = cfg[STORE].health()
    limits = cfg[LIMITER].status()
    keys = cfg[KEY_SYNC]
    serving = pool.any_healthy and not metrics.draining
    status: Literal["ok", "degraded", "unavailable"]
    if not serving:
        status = "unavailable"
    elif (
        not database.ok
        or ledger.dropped
        or ledger.rejected
        or ledger.last_error
        or limits.error
        or keys.stale
    ):
        # Still serving: keys are in memory (but may miss other replicas' changes), the
        # ledger buffers, limits are counted alone (or, under on_redis_error = "deny",
        # refused: the body says which).
        status = "degraded"
    else:
        status = "ok"
    body = Health(
        replica=cfg[SETTINGS].replica,
        status=status,
        draining=metrics.draining,
        uptime_s=round(time.time() - metrics.started_at, 1),
        in_flight=metrics.in_flight,
        keys=keys.status(),
        database=DatabaseStatus(
            ok=database.ok,
            error=database.error,
            checked_s_ago=database.checked_s_ago,
            written_s_ago=database.written_s_ago,
        ),
        ledger=ledger.status(),
        limits=LimitsStatus(
            backend=limits.backend,
            shared=limits.shared,
            error=limits.error,
            local_decisions=limits.local_decisions,
        ),
        upstreams=pool.status(),
    )
    return web.Response(
        status=200 if serving else 503, body=orjson.dumps(body), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    cfg = request.config_dict
    text = cfg[METRICS].render(cfg[LEDGER], cfg[UPSTREAMS], cfg[LIMITER].status())
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
