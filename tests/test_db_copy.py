"""`llmgw db copy --to postgresql://…`: a SQLite database filled by a real gateway, copied
by the real CLI, and served by a gateway on PostgreSQL as it was."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmgw.config import DatabaseSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import KEYS
from llmgw.store.copy import copy_sqlite_to_postgres

from .conftest import (
    Gateway,
    GatewayFactory,
    auth,
    make_settings,
    post_chat,
    run_llmgw,
    start_gateway,
)
from .databases import PostgresDatabase
from .postgres import Cluster

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TABLES = (
    "api_keys",
    "user_budgets",
    "admin_users",
    "audit_log",
    "request_logs",
    "usage_hourly",
    "usage_hourly_latency",
)


@pytest.fixture
async def blank(postgres_cluster: Cluster) -> AsyncIterator[PostgresDatabase]:
    name = f"llmgw_copy_{uuid.uuid4().hex[:12]}"
    yield PostgresDatabase(await postgres_cluster.create_database(name))
    await postgres_cluster.drop_database(name)


async def test_a_sqlite_database_copied_to_postgresql_is_served_as_it_was(
    fake: FakeVLLM,
    blank: PostgresDatabase,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    sqlite_gw = await start_gateway(make_settings(fake.url))
    try:
        alice = await sqlite_gw.create_key("alice", tier="premium", max_in_flight=3)
        bob = await sqlite_gw.create_key("bob")
        async with sqlite_gw.admin() as admin:
            await admin.add_admin("root", "a long enough password")
            await admin.set_user_budget("alice", 1_000_000, "week")
            await admin.revoke_key(bob["id"])
        for _ in range(3):
            assert await post_chat(http, sqlite_gw, alice["key"], CHAT) == 200
        embed = {"model": "fake-model", "input": "alpha beta"}
        async with http.post(
            f"{sqlite_gw.base_url}/embeddings", json=embed, headers=auth(alice["key"])
        ) as resp:
            assert resp.status == 200  # a second route: rollup cells per endpoint
        assert await post_chat(http, sqlite_gw, bob["key"], CHAT) == 401
        await sqlite_gw.flush_ledger()
        async with sqlite_gw.admin() as admin:
            before = (
                await admin.list_keys(),
                await admin.list_admins(),
                await admin.audit(),
                await admin.usage(by="key"),
                await admin.usage(by="model"),
                await admin.usage(by="endpoint"),
                await admin.user_budgets(),
            )
        assert len(before[5]["data"]) == 2
        sqlite_rows = {t: await sqlite_gw.rows(f"SELECT count(*) AS n FROM {t}") for t in TABLES}

        # A gateway still running on the file: the copy refuses it, and copies nothing.
        code, out, err = await run_llmgw("db", "copy", "--to", blank.url)
        assert (code, out) == (1, "")
        assert "stop the gateway" in err
        assert "Traceback" not in err
    finally:
        await sqlite_gw.runner.cleanup()

    code, out, err = await run_llmgw("db", "copy", "--to", blank.url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TABLE", "SQLITE", "POSTGRESQL", "CHECK"]
    counted = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert counted == {t: [str(sqlite_rows[t][0]["n"])] * 2 + ["ok"] for t in TABLES}, (
        "every table's rows counted on both sides"
    )
    assert int(counted["request_logs"][0]) == 4  # a revoked key's 401 is not in the ledger

    pg_gw: Gateway = await gateway_factory(
        database=DatabaseSettings(url=blank.url, flush_interval=0.01)
    )
    async with pg_gw.admin() as admin:
        after = (
            await admin.list_keys(),
            await admin.list_admins(),
            await admin.audit(),
            await admin.usage(by="key"),
            await admin.usage(by="model"),
            await admin.usage(by="endpoint"),
            await admin.user_budgets(),
        )
    assert after == before
    live = pg_gw.app[KEYS].get(alice["id"])
    assert live is not None
    assert (live.max_in_flight, live.user_budget_tokens) == (3, 1_000_000)
    assert await post_chat(http, pg_gw, alice["key"], CHAT) == 200  # the old secret works
    assert await post_chat(http, pg_gw, bob["key"], CHAT) == 401  # still revoked
    carol = await pg_gw.create_key("carol")
    assert carol["id"] == bob["id"] + 1, "the id sequence goes on after the copied ids"
    rows = await pg_gw.ledger_rows()
    assert [r["api_key_id"] for r in rows] == [alice["id"]] * 5
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5], "the ledger's ids kept and continued"

    # A second copy into the database now holding data: refused, nothing changed.
    code, out, err = await run_llmgw("db", "copy", "--to", blank.url)
    assert (code, out) == (1, "")
    assert "holds llmgw data already" in err
    assert len(await pg_gw.ledger_rows()) == len(rows)


async def test_a_ledger_larger_than_a_batch_goes_over_whole(
    fake: FakeVLLM, blank: PostgresDatabase, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_settings(fake.url))
    try:
        key = await gateway.create_key("alice")
        for _ in range(7):
            assert await post_chat(http, gateway, key["key"], CHAT) == 200
        source = await gateway.ledger_rows()
    finally:
        await gateway.runner.cleanup()
    report = await copy_sqlite_to_postgres(gateway.settings.database_path, blank.url, batch=3)
    assert {t.table: t.target for t in report.tables}["request_logs"] == 7
    copied = await blank.rows("SELECT * FROM request_logs ORDER BY id")
    assert [{**r, "duration_ms": float(r["duration_ms"])} for r in copied] == source
