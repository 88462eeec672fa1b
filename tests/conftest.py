"""Shared fixtures: every test runs the real gateway on real sockets, in `tmp_path`.

The only stand-in is the fake vLLM (`llmgw.fake_vllm`), itself a real HTTP server on
a loopback port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from llmgw.admin_client import AdminClient
from llmgw.api_types import CreatedKey
from llmgw.app import create_app
from llmgw.clock import Clock
from llmgw.config import (
    AdminSettings,
    DatabaseSettings,
    Settings,
    TierSettings,
    UpstreamSettings,
    load_settings,
)
from llmgw.fake_vllm import FakeVLLM
from llmgw.runner import make_runner
from llmgw.state import LEDGER, METRICS

from .databases import Database, PostgresDatabase, SqliteDatabase, database_of, read_rows
from .postgres import Cluster, PostgresMissing, start_cluster
from .redis_server import RedisServer

LLMGW = str(Path(sys.executable).parent / "llmgw")

# Settings the environment could carry in from a developer's shell or .env.
_FOREIGN_ENV = ("VLLM_BASE_URL", "DATABASE_URL", "GATEWAY_PORT", "ADMIN_SECRET_KEY")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The suite's switches. Options, not `LLMGW_*` variables: llmgw takes every one of
    those for a setting, and refuses one it does not know (tests/test_env_names.py).
    Here, in the rootdir's conftest, because pytest reads options only from the conftests
    it loads at start-up, which a `tests/failures/conftest.py` is not in every run."""
    group = parser.getgroup("llmgw")
    group.addoption(
        "--soak-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="How long tests/failures/test_soak.py runs its traffic (default: 60).",
    )
    group.addoption(
        "--soak-csv",
        type=_absolute,
        metavar="PATH",
        help="Write the soak's memory and descriptor curve to PATH as CSV.",
    )
    group.addoption(
        "--chromium",
        metavar="PATH",
        help="The Chromium the admin page test drives (default: chromium on PATH).",
    )


def _absolute(path: str) -> Path:
    # Resolved where pytest was started: each test runs in its own tmp_path.
    return Path(path).resolve()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the developer's config, database or socket."""
    for name in list(os.environ):
        if name.startswith(("LLMGW_", "RATE_LIMIT_")) or name in _FOREIGN_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LLMGW_ADMIN_SOCKET", str(tmp_path / "run" / "admin.sock"))
    monkeypatch.setenv("LLMGW_DATABASE_PATH", str(tmp_path / "data" / "llmgw.db"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLM]:
    server = FakeVLLM()
    await server.start()
    yield server
    await server.stop()


# --- the database: SQLite, or PostgreSQL for the tests marked both_databases ------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `both_databases` whose fixtures include `database` (a gateway's do)
    runs twice: on SQLite and on PostgreSQL."""
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_databases"
    ):
        metafunc.parametrize("database", ["sqlite", "postgres"], indirect=True)


def running_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL server, destroyed at the end; the test fails (never skips)
    when one cannot start."""
    try:
        cluster = start_cluster()
    except PostgresMissing as exc:
        pytest.fail(f"cannot start PostgreSQL for the tests: {exc}", pytrace=False)
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """The session's own PostgreSQL server, started on first use."""
    yield from running_cluster()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the test's own, to stop and start again."""
    yield from running_cluster()


@pytest.fixture
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The database the test's gateways and stores use: the isolated SQLite file, or
    (parametrised `postgres`) a new database on the session's PostgreSQL server, dropped
    at the end."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield SqliteDatabase(tmp_path / "data" / "llmgw.db")
        return
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    name = f"llmgw_test_{uuid.uuid4().hex[:12]}"
    url = await cluster.create_database(name)
    yield PostgresDatabase(url)
    await cluster.drop_database(name)


@dataclass
class Gateway:
    """A running gateway and the handles a test needs to look inside it."""

    url: str
    app: web.Application
    settings: Settings
    runner: web.AppRunner

    @property
    def database(self) -> Database:
        return database_of(self.settings)

    async def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Rows read straight from the gateway's database (`?` placeholders)."""
        return await self.database.rows(query, *params)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def socket_path(self) -> Path:
        return self.settings.socket_path

    def admin(self) -> AdminClient:
        return AdminClient(self.socket_path)

    async def create_key(self, user_id: str = "alice", **fields: Any) -> CreatedKey:
        async with self.admin() as admin:
            return await admin.create_key(user_id, **fields)

    async def flush_ledger(self) -> None:
        """Wait (bounded) until every finished request's row is committed."""
        ledger, metrics = self.app[LEDGER], self.app[METRICS]
        async with asyncio.timeout(5):
            while ledger.pending or metrics.in_flight:
                await asyncio.sleep(0.01)

    async def ledger_rows(self) -> list[dict[str, Any]]:
        await self.flush_ledger()
        return await self.rows("SELECT * FROM request_logs ORDER BY id")


def make_settings(fake_url: str, **overrides: Any) -> Settings:
    """Settings from the (isolated) environment, pointed at `fake_url`."""
    base = load_settings(None)
    settings = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, host="127.0.0.1", port=0),
        upstreams=(UpstreamSettings(fake_url),),
        database=dataclasses.replace(base.database, flush_interval=0.01),
    )
    return dataclasses.replace(settings, **overrides)


class FakeClock:
    """A `Clock` that moves only when told: `wall` starts at the real time, `monotonic`
    at 1000; calling it reads the monotonic time (for what takes a plain callable)."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._monotonic = 1000.0

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def __call__(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; fails (never skips) without one."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


async def start_gateway(settings: Settings, clock: Clock | None = None) -> Gateway:
    app = create_app(settings, clock)
    runner = make_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return Gateway(f"http://{host}:{port}", app, settings, runner)


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway_factory(fake: FakeVLLM, database: Database) -> AsyncIterator[GatewayFactory]:
    """Start gateways with setting overrides (and a clock of their own), on the test's
    `database` unless the overrides name one; all are stopped at the end."""
    started: list[Gateway] = []

    async def start(clock: Clock | None = None, **overrides: Any) -> Gateway:
        settings = make_settings(fake.url, **overrides)
        if "database" not in overrides:
            settings = database.configure(settings)
        if settings.postgres_url and not settings.admin.secret_key:
            # Replicas on one PostgreSQL database share a token secret (start-up says so).
            admin = dataclasses.replace(settings.admin, secret_key="replicas-share-this")
            settings = dataclasses.replace(settings, admin=admin)
        gateway = await start_gateway(settings, clock)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.runner.cleanup()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    gw: Gateway = await gateway_factory()
    return gw


@pytest.fixture
async def api_key(gateway: Gateway) -> str:
    created = await gateway.create_key("alice", tier="premium")
    key: str = created["key"]
    return key


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def normalised(events: list[str]) -> list[Any]:
    """Events with the per-request parts (id, created) blanked, to compare two streams."""
    out: list[Any] = []
    for event in events:
        payload = event.removeprefix("data: ")
        if payload == "[DONE]":
            out.append(payload)
            continue
        parsed = json.loads(payload)
        parsed.pop("id", None)
        parsed.pop("created", None)
        out.append(parsed)
    return out


async def post_chat(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, body: dict[str, Any]
) -> int:
    """POST one chat completion through the gateway with `key`; its status."""
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        await resp.read()
        return resp.status


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(
    url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def sse_events(raw: bytes) -> list[str]:
    return [e for e in raw.decode().split("\n\n") if e]


class CliRun(NamedTuple):
    """A finished `llmgw`: unpacks as `code, out, err = await run_llmgw(...)`."""

    code: int
    stdout: str
    stderr: str


async def run_llmgw(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> CliRun:
    """The real `llmgw` in a subprocess. Asynchronous, because the gateway it talks to
    usually runs in the test's own event loop."""
    pipe = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(
        LLMGW, *args, stdin=pipe, stdout=pipe, stderr=pipe, env=env
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate(None if stdin is None else stdin.encode())
    assert process.returncode is not None
    return CliRun(process.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_file_env() -> dict[str, str]:
    """The environment for a `llmgw serve` whose config file alone decides: no LLMGW_*
    override from the test environment."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}


async def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Until `condition()` holds; TimeoutError after `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def wait_healthy(
    url: str,
    process: asyncio.subprocess.Process | None = None,
    log: Path | None = None,
    seconds: float = 30,
) -> None:
    """Until `url`/health answers 200 (bounded); fails at once if `process` exits."""
    async with asyncio.timeout(seconds), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if process is not None and process.returncode is not None:
                said = log.read_text() if log is not None else ""
                raise AssertionError(f"llmgw serve exited with {process.returncode}:\n{said}")
            await asyncio.sleep(0.05)


class Served:
    """`llmgw serve` running as a real process (with its own config file) in front of
    the test's fake vLLM. `start` (again) runs it on the same config, database and port.
    With `database_url` it keeps its ledger there (PostgreSQL, say) instead of its own
    SQLite file; `secret_key` is the admin token secret replicas must share."""

    def __init__(
        self,
        root: Path,
        fake_url: str,
        extra_config: str = "",
        *,
        database_url: str = "",
        secret_key: str = "",
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = root / "admin.sock"
        self.database = root / "llmgw.db"
        self.log = root / "gateway.log"
        self.config = root / "llmgw.toml"
        self.config.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
shutdown_grace_period = 20
shutdown_drain_delay = 0.5

[admin]
socket = "{self.socket}"
secret_key = "{secret_key}"

[database]
path = "{self.database}"
url = "{database_url}"

[[upstreams]]
url = "{fake_url}"
"""
            + extra_config
        )
        self._process: asyncio.subprocess.Process | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    async def start(self) -> None:
        """Start the gateway and wait (bounded) until `/health` answers 200."""
        with self.log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                LLMGW, "serve", "--config", str(self.config), stdout=log, stderr=log,
                env=config_file_env(),
            )  # fmt: skip
        await wait_healthy(self.url, self._process, self.log)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


@pytest.fixture
async def served(tmp_path: Path, fake: FakeVLLM) -> AsyncIterator[Served]:
    server = Served(tmp_path, fake.url)
    await server.start()
    yield server
    await server.stop()


def with_secret(secret: str) -> AdminSettings:
    """The (isolated) admin settings with a token secret: keeps the test's socket path."""
    return dataclasses.replace(load_settings(None).admin, secret_key=secret)


def tiers(**limits: tuple[int, int]) -> dict[str, TierSettings]:
    """Tiers for a test: name=(per_minute, per_hour)."""
    return {name: TierSettings(m, h) for name, (m, h) in limits.items()}


__all__ = [
    "Database",
    "DatabaseSettings",
    "Gateway",
    "GatewayFactory",
    "make_settings",
    "read_rows",
    "start_gateway",
    "tiers",
]
