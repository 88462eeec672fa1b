"""Running the gateway: listen, wait for SIGTERM or SIGINT, drain, stop.

On a signal the gateway reports itself unavailable on `/health`, stops accepting
connections, lets in-flight requests (streams included) finish within the grace period,
and then tears its resources down: admin socket removed, ledger flushed, database
closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from .app import create_app
from .config import Settings
from .runner import make_runner
from .state import METRICS

log = logging.getLogger("llmgw")

OnReady = Callable[[web.AppRunner], Awaitable[None]]


async def run_gateway(settings: Settings, on_ready: OnReady | None = None) -> None:
    app = create_app(settings)
    runner = make_runner(app, settings.server.shutdown_grace_period)
    try:
        # Inside the try: a start-up that fails once the database is open must still
        # close it, or aiosqlite's thread keeps the failed process alive.
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        # Everything made so far (modules, settings, the key table) lives as long as the
        # process: out of the collector's sight, the collections that requests trigger
        # no longer walk it each time. And a request makes hundreds of objects that
        # reference counting frees: a young collection every 700 allocations (the
        # default) would run about once per request; every 20,000 costs less (bench/).
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("llmgw serving on %s", ", ".join(_addresses(runner)))
        if on_ready is not None:
            await on_ready(runner)
        await stop.wait()
        app[METRICS].draining = True
        log.info(
            "shutting down: %d requests in flight, grace period %g s",
            app[METRICS].in_flight,
            settings.server.shutdown_grace_period,
        )
    finally:
        await runner.cleanup()
    log.info("stopped")


def _addresses(runner: web.AppRunner) -> list[str]:
    return [f"http://{host}:{port}" for host, port, *_ in runner.addresses]


def public_url(runner: web.AppRunner) -> str:
    """A URL a local client can use (a wildcard bind is reached on loopback)."""
    host, port, *_ = runner.addresses[0]
    if host in ("0.0.0.0", "::"):  # noqa: S104
        host = "127.0.0.1"
    return f"http://{host}:{port}"
