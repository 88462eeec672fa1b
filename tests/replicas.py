"""Replicas of `llmgw serve` as real processes sharing one PostgreSQL database and one
Redis, as `DESIGN.md`'s "Beyond one process" draws them, with no balancer in front: the
load spreads its requests over the replicas itself.

Each replica is a `Served` (its own port, admin socket, config file and log) with the
same `[database] url`, `[limits]`, tiers and admin secret. The keys a test needs are
made on the first replica before the others start (`Replicas.start`): the others load
them from the database, so a test never waits for a key to reach them (key sync has its
own tests, `tests/test_key_sync.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from llmgw.admin_client import AdminClient
from llmgw.api_types import CreatedKey

from .conftest import Served, auth
from .databases import PostgresDatabase
from .redis_server import PATIENT

SECRET = "replicas-share-this-token-secret"
CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
)


def tier_tables(**limits: tuple[int, int]) -> str:
    """`[tiers.NAME]` tables for a config file: name=(per_minute, per_hour)."""
    return "".join(
        f"\n[tiers.{name}]\nrequests_per_minute = {m}\nrequests_per_hour = {h}\n"
        for name, (m, h) in limits.items()
    )


class Replicas:
    """`count` gateways on `database_url` and the Redis at `redis_url`."""

    def __init__(
        self,
        root: Path,
        fake_url: str,
        *,
        database_url: str,
        redis_url: str,
        tiers: str,
        count: int = 3,
    ) -> None:
        config = (
            f'\n[limits]\nbackend = "redis"\nredis_url = "{redis_url}"\n'
            f"redis_timeout = {PATIENT}\n" + tiers
        )
        self.database = PostgresDatabase(database_url)
        self.all: list[Served] = []
        for n in range(1, count + 1):
            (root / f"replica{n}").mkdir(parents=True)
            self.all.append(
                Served(
                    root / f"replica{n}",
                    fake_url,
                    config,
                    database_url=database_url,
                    secret_key=SECRET,
                )
            )

    @property
    def first(self) -> Served:
        return self.all[0]

    async def start(self, make_keys: Callable[[], Awaitable[Any]]) -> None:
        """The first replica, then `make_keys` (through its admin socket), then the rest
        together: they read the keys from the database as they start."""
        await self.first.start()
        await make_keys()
        await asyncio.gather(*(served.start() for served in self.all[1:]))

    async def create_key(self, tier: str) -> CreatedKey:
        async with AdminClient(self.first.socket) as admin:
            return await admin.create_key("alice", tier=tier)

    async def stop(self) -> None:
        await asyncio.gather(*(served.stop() for served in self.all))

    def alive(self) -> list[Served]:
        return [s for s in self.all if s._process is not None and s.process.returncode is None]

    async def health(self) -> list[dict[str, Any]]:
        """Each live replica's /health body (it answers 200 whether ok or degraded)."""
        async with aiohttp.ClientSession() as session:
            return [await _health(session, served) for served in self.alive()]

    async def until(self, status: str, seconds: float = 30) -> float:
        """Seconds until every live replica's /health says `status` (bounded)."""
        began = time.monotonic()
        async with asyncio.timeout(seconds):
            while any(h["status"] != status for h in await self.health()):
                await asyncio.sleep(0.05)
        return time.monotonic() - began

    async def settled(self, seconds: float = 30) -> None:
        """Until no live replica has a request in flight or a ledger row unwritten."""
        async with asyncio.timeout(seconds):
            # in_flight > 1: the /health request counts itself.
            while any(h["in_flight"] > 1 or h["ledger"]["pending"] for h in await self.health()):
                await asyncio.sleep(0.05)
        for h in await self.health():
            assert (h["ledger"]["dropped"], h["ledger"]["rejected"]) == (0, 0), h["ledger"]

    async def ledger(self, key_id: int | None = None) -> list[dict[str, Any]]:
        """The ledger rows (request id, status) in PostgreSQL, of one key or all."""
        query = "SELECT request_id, status_code FROM request_logs"
        if key_id is None:
            return await self.database.rows(query)
        return await self.database.rows(query + " WHERE api_key_id = ?", key_id)


async def _health(session: aiohttp.ClientSession, served: Served) -> dict[str, Any]:
    async with session.get(f"{served.url}/health") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


@dataclass(frozen=True, slots=True)
class Answer:
    """What one client saw: which replica it asked, the answer, and when it ended."""

    replica: int  # 0-based index into Replicas.all
    status: int
    request_id: str
    body: bytes
    headers: dict[str, str]
    sent: float  # time.monotonic() when the request was sent
    at: float  # and when its answer had been read


async def ask(session: aiohttp.ClientSession, replica: int, served: Served, key: str) -> Answer:
    headers = auth(key) | {"Content-Type": "application/json"}
    sent = time.monotonic()
    async with session.post(
        f"{served.url}/v1/chat/completions", data=CHAT, headers=headers
    ) as resp:
        body = await resp.read()
        return Answer(
            replica,
            resp.status,
            resp.headers["x-request-id"],
            body,
            dict(resp.headers),
            sent,
            time.monotonic(),
        )


async def burst(replicas: Sequence[Served], key: str, count: int) -> list[Answer]:
    """`count` requests at once, spread round-robin over `replicas` (bounded)."""
    connector = aiohttp.TCPConnector(limit=0)  # all at once: no client-side queue
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        asked = (i % len(replicas) for i in range(count))
        return await asyncio.gather(*(ask(session, n, replicas[n], key) for n in asked))


@dataclass
class Load:
    """What a steady load saw: every answer, and attempts that got none."""

    answers: list[Answer] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)  # the replica asked, per failure

    def served_by(self, replicas: int) -> list[int]:
        """Answers each replica gave, in order."""
        counts = Counter(answer.replica for answer in self.answers)
        return [counts[i] for i in range(replicas)]


async def hammer(
    replicas: Sequence[Served],
    index: int,
    key: str,
    load: Load,
    stop: asyncio.Event,
    seconds: float = 60,
) -> None:
    """Requests to `replicas[index]` one after another until `stop` (or `seconds`); a
    replica that refuses connections is tried every 50 ms."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                load.answers.append(await ask(session, index, replicas[index], key))
            except (aiohttp.ClientConnectionError, TimeoutError):
                load.unanswered.append(index)
                await asyncio.sleep(0.05)


async def steady_load(
    replicas: Sequence[Served], key: str, load: Load, stop: asyncio.Event, per_replica: int = 3
) -> list[asyncio.Task[None]]:
    """`per_replica` clients hammering each replica."""
    return [
        asyncio.create_task(hammer(replicas, i, key, load, stop))
        for i in range(len(replicas))
        for _ in range(per_replica)
    ]
