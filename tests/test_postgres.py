"""What only PostgreSQL has to get right: replicas writing the same ledger rows at once,
replicas migrating at once, the server going away and coming back, and backups left to
pg_dump. (Everything the two databases share runs on both: the `both_databases` tests.)
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from llmgw import rollups
from llmgw.admin_client import AdminApiError
from llmgw.config import DatabaseSettings
from llmgw.ledger import UsageRecord
from llmgw.state import LEDGER
from llmgw.store import PostgresStore, StoreUnavailable
from llmgw.store.postgres_migrations import MIGRATIONS
from llmgw.times import iso_utc

from .conftest import Gateway, GatewayFactory, free_port, post_chat, run_llmgw, wait_for
from .databases import PostgresDatabase
from .postgres import Cluster

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HOUR = 1_790_002_800.0


@pytest.fixture
async def blank(postgres_cluster: Cluster) -> AsyncIterator[PostgresDatabase]:
    name = f"llmgw_pg_{uuid.uuid4().hex[:12]}"
    yield PostgresDatabase(await postgres_cluster.create_database(name))
    await postgres_cluster.drop_database(name)


def records(count: int, rng: random.Random) -> list[UsageRecord]:
    return [
        UsageRecord(
            request_id=f"req-{i:05d}",
            user_id=f"user{i % 4}",
            api_key_id=(i % 6) or None,
            endpoint="/v1/chat/completions",
            method="POST",
            status_code=rng.choice((200, 200, 200, 429, 404, 499, 503)),
            duration_ms=round(rng.lognormvariate(5, 1.5), 3),
            ttft_ms=None,
            prompt_tokens=rng.randrange(1000),
            completion_tokens=rng.randrange(1000),
            usage_source="reported",
            model=rng.choice(("m1", "m2", None)),
            upstream=None,
            timestamp=HOUR + rng.uniform(0, 3 * 3600),
        )
        for i in range(count)
    ]


def oracle(written: list[UsageRecord]) -> tuple[dict[Any, list[int]], Counter[Any]]:
    """The rollups counted in Python from the records: cells and latency buckets."""
    cells: dict[Any, list[int]] = {}
    latency: Counter[Any] = Counter()
    for r in written:
        cell = (iso_utc(r.timestamp)[:13], r.user_id, r.api_key_id or 0, r.model or "")
        sums = cells.setdefault(cell, [0, 0, 0, 0, 0])
        limited = r.status_code == 429
        error = r.status_code >= 400 and not limited
        for i, add in enumerate((1, error, limited, r.prompt_tokens, r.completion_tokens)):
            sums[i] += int(add)
        if not limited:
            latency[(*cell, rollups.bucket_of(r.duration_ms))] += 1
    return cells, latency


async def test_two_replicas_writing_the_same_rows_at_once_never_deadlock_nor_double(
    blank: PostgresDatabase,
) -> None:
    """Two stores (two pools: two replicas) write overlapping batches at once, each
    batch in its own order, several at a time: every row is written once, every rollup
    counts it once, and no writer waits on another in a circle (PostgreSQL would raise
    DeadlockDetectedError after a second)."""
    rng = random.Random(14)
    every = records(3000, rng)
    replicas = [await blank.open_store(), await blank.open_store()]
    async with replicas[0].transaction() as tx:
        for n in range(1, 6):
            await tx.insert_key(
                key_hash=f"h{n}", key_prefix=f"sk-internal-{n:04d}", user_id=f"user{n % 4}",
                tier="free", description="",
            )  # fmt: skip

    async def write(store: Any, batch: list[UsageRecord]) -> int:
        batch = batch[:]
        rng.shuffle(batch)
        inserted: int = await store.insert_request_logs(batch)
        return inserted

    inserted = 0
    async with asyncio.timeout(120):
        for start in range(0, len(every), 300):
            window = every[start : start + 600]  # each batch also overlaps the next
            halves = (window[: len(window) // 2], window[len(window) // 2 :])
            counts = await asyncio.gather(
                *(write(store, part) for store in replicas for part in (window, window, *halves))
            )
            inserted += sum(counts)
    for store in replicas:
        await store.close()

    assert inserted == len(every)
    rows = await blank.rows("SELECT request_id FROM request_logs")
    assert sorted(r["request_id"] for r in rows) == [r.request_id for r in every]
    cells, latency = oracle(every)
    stored = {
        (c["hour"], c["user_id"], c["api_key_id"], c["model"]): [
            c["requests"], c["errors"], c["rate_limited"], c["prompt_tokens"],
            c["completion_tokens"],
        ]
        for c in await blank.rows("SELECT * FROM usage_hourly")
    }  # fmt: skip
    assert stored == cells
    buckets = await blank.rows("SELECT * FROM usage_hourly_latency")
    assert {
        (b["hour"], b["user_id"], b["api_key_id"], b["model"], b["bucket"]): b["count"]
        for b in buckets
    } == latency
    used = await blank.rows("SELECT id, last_used_at FROM api_keys ORDER BY id")
    newest = {n: max(iso_utc(r.timestamp) for r in every if r.api_key_id == n) for n in range(1, 6)}
    assert {u["id"]: u["last_used_at"] for u in used} == newest


async def test_replicas_starting_together_migrate_once(blank: PostgresDatabase) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(blank.url) for _ in range(3)))
    for store in stores:
        await store.close()
    applied = await blank.rows("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in applied] == [m.version for m in MIGRATIONS]


async def test_an_unreachable_server_is_named_at_start() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailable, match=rf"PostgreSQL database 'llmgw' at 127.0.0.1:{port}"):
        await PostgresStore.open(f"postgresql://llmgw:hunter2@127.0.0.1:{port}/llmgw")


async def chats(http: aiohttp.ClientSession, gateway: Gateway, key: str, count: int) -> None:
    for _ in range(count):
        assert await post_chat(http, gateway, key, CHAT) == 200


async def health(http: aiohttp.ClientSession, gateway: Gateway) -> dict[str, Any]:
    async with http.get(f"{gateway.url}/health") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_the_server_stopping_refuses_changes_and_the_ledger_loses_nothing(
    own_cluster: Cluster, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    url = await own_cluster.create_database("llmgw")
    gateway: Gateway = await gateway_factory(
        database=DatabaseSettings(url=url, flush_interval=0.01)
    )
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    await chats(http, gateway, key, 5)
    await gateway.flush_ledger()

    await own_cluster.stop_async()  # pg_ctl stop -m fast: every session is cut off
    for change in ("create_key", "list_keys"):  # a change, and a read
        async with gateway.admin() as admin:
            with pytest.raises(AdminApiError) as caught:
                if change == "create_key":
                    await admin.create_key("bob")
                else:
                    await admin.list_keys()
        assert caught.value.status == 503
        assert f"PostgreSQL database 'llmgw' at 127.0.0.1:{own_cluster.port}" in (
            caught.value.message
        )
        assert "cannot be reached" in caught.value.message
    await chats(http, gateway, key, 10)  # keys are in memory: requests go on
    ledger = gateway.app[LEDGER]
    await wait_for(lambda: ledger.failed_writes > 0)
    assert ledger.pending == 10
    async with asyncio.timeout(10):  # the store's watcher looks every second
        while (report := await health(http, gateway))["database"]["ok"]:
            await asyncio.sleep(0.1)
    assert report["status"] == "degraded"
    assert "PostgreSQL database 'llmgw'" in report["database"]["error"]
    assert "PostgreSQL database 'llmgw'" in report["ledger"]["last_error"]

    await own_cluster.start_async()
    await wait_for(lambda: ledger.pending == 0, seconds=30)
    rows = await gateway.rows("SELECT request_id, status_code FROM request_logs")
    assert len(rows) == 15
    assert len({r["request_id"] for r in rows}) == 15
    [totals] = await gateway.rows("SELECT sum(requests) AS n FROM usage_hourly")
    assert totals["n"] == 15
    async with gateway.admin() as admin:
        await admin.create_key("bob")  # changes are taken again
        assert [k["user_id"] for k in await admin.list_keys()] == ["alice", "bob"]
    await wait_for(lambda: ledger.last_error is None)


async def test_a_backup_of_postgresql_says_to_use_pg_dump(
    blank: PostgresDatabase, gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gateway: Gateway = await gateway_factory(
        database=DatabaseSettings(url=blank.url, flush_interval=0.01)
    )
    async with gateway.admin() as admin:
        with pytest.raises(AdminApiError) as caught:
            await admin.backup(tmp_path / "copy")
    assert caught.value.status == 501
    assert "pg_dump" in caught.value.message
    code, out, err = await run_llmgw(
        "--socket", str(gateway.socket_path), "db", "backup", str(tmp_path / "llmgw.db")
    )
    assert (code, out) == (1, "")
    assert "pg_dump" in err
    assert "Traceback" not in err
    assert not (tmp_path / "llmgw.db").exists()
