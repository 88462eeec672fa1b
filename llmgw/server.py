"""Running the gateway: listen, wait for SIGTERM or SIGINT, drain, stop.

The public port and the admin socket are claimed first, before the database is opened:
a gateway that cannot serve (another one does) stops without creating or migrating a
database. On a signal the gateway reports itself unavailable on `/health`, stops
accepting connections, lets in-flight requests (streams included) finish within the
grace period, and then tears its resources down: admin socket removed, ledger flushed,
database closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from .admin_socket import AdminListener
from .app import create_app
from .config import Settings
from .runner import make_runner
from .state import METRICS

log = logging.getLogger("llmgw")

OnReady = Callable[[web.AppRunner], Awaitable[None]]

BACKLOG = 128  # aiohttp's default


class ListenError(RuntimeError):
    """The public port cannot be listened on; the message says why and what to do."""


async def run_gateway(settings: Settings, on_ready: OnReady | None = None) -> None:
    server = settings.server
    with contextlib.ExitStack() as claimed:
        listening = [claimed.enter_context(s) for s in await listen(server.host, server.port)]
        admin = AdminListener.bind(settings.socket_path)
        claimed.callback(admin.close)  # if start-up fails before the app has taken it
        app = create_app(settings, admin_listener=admin)
        runner = make_runner(app, server.shutdown_grace_period)
        try:
            # Inside the try: a start-up that fails once the database is open must still
            # close it, or aiosqlite's thread keeps the failed process alive.
            await runner.setup()
            for sock in listening:
                await web.SockSite(runner, sock, backlog=BACKLOG).start()
            # Everything made so far (modules, settings, the key table) lives as long as
            # the process: out of the collector's sight, the collections that requests
            # trigger no longer walk it each time. And a request makes hundreds of objects
            # that reference counting frees: a young collection every 700 allocations (the
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
            await _drain(app, stop, server.shutdown_drain_delay)
            log.info(
                "shutting down: %d requests in flight, grace period %g s",
                app[METRICS].in_flight,
                server.shutdown_grace_period,
            )
        finally:
            await runner.cleanup()
    log.info("stopped")


async def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names (two for `localhost`: IPv4 and
    IPv6), made as aiohttp's `TCPSite` would make them."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    loop = asyncio.get_running_loop()
    try:
        addresses = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        message = f"cannot listen on {where}: {exc.strerror}: check [server] host"
        raise ListenError(message) from None
    listening: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            listening.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # its own socket for IPv4, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in listening:
            sock.close()
        hint = (
            "another process listens there (another llmgw?): stop it, or set [server] port"
            if exc.errno == errno.EADDRINUSE
            else "check [server] host and port"
        )
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {where}: {reason}: {hint}") from None
    return listening


async def _drain(app: web.Application, stop: asyncio.Event, delay: float) -> None:
    """Say `/health` 503 while still serving for `delay` seconds (or until a second
    signal): a load balancer that checks health learns the gateway is leaving from an
    answer, not from a refused connection, and sends its requests elsewhere first."""
    app[METRICS].draining = True
    if delay <= 0:
        return
    log.info("draining: /health answers 503 for %g s, then no new connections", delay)
    stop.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()


def _addresses(runner: web.AppRunner) -> list[str]:
    return [f"http://{host}:{port}" for host, port, *_ in runner.addresses]


def public_url(runner: web.AppRunner) -> str:
    """A URL a local client can use (a wildcard bind is reached on loopback)."""
    host, port, *_ = runner.addresses[0]
    if host in ("0.0.0.0", "::"):  # noqa: S104
        host = "127.0.0.1"
    return f"http://{host}:{port}"
