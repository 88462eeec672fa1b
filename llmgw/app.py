"""The app factory: the public application, its resources, and the admin socket.

Each resource is set up and torn down by its own `cleanup_ctx` generator, in this
order: log flusher, limiter (its Redis client, if any), database, key table (loaded from
the database, then following other replicas' changes), ledger writer, upstream client
and health prober, admin socket.
Teardown runs in reverse, so the admin socket goes first, the ledger is flushed after
the last request has finished, and the log after the last line of the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import admin, health, proxy
from .admin import ui
from .admin.remote import create_remote_app
from .admin_socket import AdminListener, peer_middleware
from .client_address import TrustedProxies
from .clock import Clock, SystemClock
from .config import Settings, check_replicas
from .key_sync import KeySync
from .keys import KeyTable
from .ledger import Ledger
from .limits import SpentTokens, open_limiter
from .limits.login import open_throttle
from .live import LiveStats
from .logs import FLUSH_INTERVAL, flush_logs
from .metrics import Metrics
from .middleware import accounting_middleware, add_response_headers, error_middleware
from .state import (
    CLIENT,
    CLOCK,
    KEY_SYNC,
    KEYS,
    LEDGER,
    LIMITER,
    LIVE,
    METRICS,
    SETTINGS,
    STORE,
    STORED_RESPONSES,
    TRUSTED_PROXIES,
    UPSTREAMS,
)
from .store import open_store
from .stored import StoredResponses
from .upstreams import UpstreamPool

log = logging.getLogger("llmgw")

# vLLM (uvicorn) closes idle keep-alive connections after 5 s; reusing one it is
# closing at that moment would fail a request, so the pool lets them go first.
UPSTREAM_KEEPALIVE = 4.0
# How often the store looks at its database for /health (a stat and a one-row read).
DATABASE_WATCH_INTERVAL = 1.0
# Seconds a budget read waits for the ledger to write what this process has queued.
SPENT_WAIT = 2.0

ADMIN_LISTENER = web.AppKey("admin_listener", AdminListener)


def create_app(
    settings: Settings, clock: Clock | None = None, admin_listener: AdminListener | None = None
) -> web.Application:
    """The gateway. `clock`: the time everything in it reads (the system's by default).
    `admin_listener`: the admin socket, bound already (`llmgw serve` binds it before
    anything else); without one, the app binds it last at start-up."""
    check_replicas(settings)
    clock = clock or SystemClock()
    app = web.Application(
        middlewares=[accounting_middleware(), error_middleware()],
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[KEYS] = KeyTable()
    app[TRUSTED_PROXIES] = TrustedProxies(settings.admin.trusted_proxies)
    app[UPSTREAMS] = UpstreamPool(
        settings.upstreams, settings.server.upstream_connect_timeout, settings.routing, clock
    )
    app[METRICS] = Metrics()
    app[LIVE] = LiveStats()
    app[STORED_RESPONSES] = StoredResponses(app[CLOCK].monotonic)
    if admin_listener is not None:
        app[ADMIN_LISTENER] = admin_listener
    app.cleanup_ctx.extend(
        [
            _log_flusher,
            _database,
            _limiter,  # after the store: budgets start from the ledger
            _key_sync,
            _ledger,
            _upstream_client,
            _upstream_scraper,
            _admin_socket,
        ]
    )
    app.on_response_prepare.append(add_response_headers)
    health.add_routes(app)
    proxy.add_routes(app)
    # Subapp resources are found through the gateway's (request.config_dict).
    throttle = open_throttle(settings, clock.monotonic)
    app.add_subapp("/admin/api", create_remote_app(settings.admin.secret_key, throttle))
    ui.add_routes(app)
    if not settings.admin.secret_key:
        log.info("no [admin] secret_key: remote admin tokens end when the gateway stops")
    return app


def create_admin_app(gateway: web.Application) -> web.Application:
    """The admin API for the Unix socket, sharing the gateway's resources."""
    settings = gateway[SETTINGS]
    allowed = frozenset({0, os.geteuid(), *settings.admin.allowed_uids})
    door = web.Application(middlewares=[peer_middleware(allowed), error_middleware()])
    door[SETTINGS] = settings
    door[CLOCK] = gateway[CLOCK]
    door[STORE] = gateway[STORE]
    door[KEYS] = gateway[KEYS]
    door[KEY_SYNC] = gateway[KEY_SYNC]
    door[LIMITER] = gateway[LIMITER]
    door[UPSTREAMS] = gateway[UPSTREAMS]
    door[METRICS] = gateway[METRICS]
    door[LEDGER] = gateway[LEDGER]
    door[LIVE] = gateway[LIVE]
    admin.add_routes(door)
    return door


async def _log_flusher(app: web.Application) -> AsyncIterator[None]:
    """Log lines are buffered (`logs.LineHandler`): they reach the file within a
    `FLUSH_INTERVAL`, and all of them before the gateway is gone."""

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            flush_logs()

    task = asyncio.create_task(flush_periodically(), name="log-flusher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    flush_logs()


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    limiter = await open_limiter(app[SETTINGS], app[CLOCK], _spent_tokens(app))
    app[LIMITER] = limiter
    yield
    await limiter.close()


def _spent_tokens(app: web.Application) -> SpentTokens:
    """Where a budget's period starts from: the ledger, once the requests this process
    has finished (still queued for the database) are in it. A budget is read once a
    period, so waiting a flush for that is cheap; if the database is away, its own
    error (503 database_unavailable) says so."""

    async def spent(since: float, *, key_id: int | None = None, user_id: str | None = None) -> int:
        await app[LEDGER].caught_up(SPENT_WAIT)
        return await app[STORE].tokens_since(since, key_id=key_id, user_id=user_id)

    return spent


async def _database(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[SETTINGS], app[CLOCK].wall)
    app[STORE] = store
    watcher = asyncio.create_task(store.watch(DATABASE_WATCH_INTERVAL), name="database-watch")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await store.close()


async def _key_sync(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    sync = KeySync(store, app[KEYS], app[LIMITER], app[SETTINGS].database.key_sync_interval)
    await sync.load()
    app[KEY_SYNC] = sync
    log.info("database %s: %d keys", store.name, len(app[KEYS]))
    task = asyncio.create_task(sync.run(), name="key-sync")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    db = app[SETTINGS].database
    ledger = Ledger(
        app[STORE].insert_request_logs,
        flush_interval=db.flush_interval,
        batch_size=db.batch_size,
        max_pending=db.max_pending,
    )
    app[LEDGER] = ledger
    task = asyncio.create_task(ledger.run(), name="ledger-writer")
    yield
    # A database file deleted while serving is written back first: the last records
    # would otherwise go to the deleted file, or nowhere.
    await app[STORE].write_back()
    await ledger.close(task)
    log.info("ledger flushed: %d records written, %d dropped", ledger.written, ledger.dropped)


async def _upstream_client(app: web.Application) -> AsyncIterator[None]:
    server = app[SETTINGS].server
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=server.upstream_connect_timeout),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
    app[CLIENT] = session
    pool = app[UPSTREAMS]
    await pool.probe_all(session)
    prober = asyncio.create_task(
        pool.run_prober(session, server.health_check_interval), name="upstream-prober"
    )
    yield
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    await session.close()


async def _upstream_scraper(app: web.Application) -> AsyncIterator[None]:
    """Reads of each upstream's /metrics (unless `metrics_interval` is 0), on a
    connection of their own to each: in the requests' pool (which hands out its oldest
    idle connection first), a read every second would keep every connection a burst
    opened alive for good."""
    interval = app[SETTINGS].routing.metrics_interval
    if not interval:
        yield
        return
    pool = app[UPSTREAMS]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit_per_host=1, keepalive_timeout=max(UPSTREAM_KEEPALIVE, 2 * interval)
        ),
        skip_auto_headers=("User-Agent",),
    )
    await pool.scrape_all(session)
    scraper = asyncio.create_task(pool.run_scraper(session), name="upstream-scraper")
    yield
    scraper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await scraper
    await session.close()


async def _admin_socket(app: web.Application) -> AsyncIterator[None]:
    path = app[SETTINGS].socket_path
    # Admin requests are short but for backups and live-stats streams (which end
    # themselves on shutdown): no reason to hold a stopping gateway for long.
    runner = web.AppRunner(create_admin_app(app), access_log=None, shutdown_timeout=5.0)
    listener = app.get(ADMIN_LISTENER) or AdminListener.bind(path)
    try:
        await runner.setup()
        await web.SockSite(runner, listener.sock).start()
        log.info("admin socket %s", path)
        yield
    finally:
        await runner.cleanup()
        listener.close()
