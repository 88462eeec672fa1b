"""The schema a blank database ends with, and the store's guarantees: on SQLite and on
PostgreSQL alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import asyncpg
import pytest

from llmgw.keys import hash_key
from llmgw.ledger import UsageRecord
from llmgw.store import AlreadyExists, StoreError
from llmgw.store.postgres_migrations import MIGRATIONS as POSTGRES_MIGRATIONS
from llmgw.store.sqlite_migrations import MIGRATIONS as SQLITE_MIGRATIONS

from .conftest import Database, read_rows
from .databases import PostgresDatabase, SqliteDatabase

pytestmark = pytest.mark.both_databases

# Each database's own: (version, name) of every migration, in order.
MIGRATIONS = {
    "sqlite": [(m.version, m.name) for m in SQLITE_MIGRATIONS],
    "postgres": [(m.version, m.name) for m in POSTGRES_MIGRATIONS],
}


async def test_a_blank_database_gets_the_seed_tables_and_records_its_migrations(
    database: Database,
) -> None:
    store = await database.open_store()
    await store.close()
    assert await database.columns("api_keys") == [
        "id", "key_hash", "key_prefix", "user_id", "tier", "description", "is_active",
        "created_at", "updated_at", "expires_at", "last_used_at", "allowed_models",
        "requests_per_minute", "requests_per_hour", "tokens_per_minute", "tokens_per_day",
        "max_in_flight", "budget_tokens", "budget_period",
    ]  # fmt: skip
    assert await database.columns("user_budgets") == [
        "user_id", "budget_tokens", "budget_period", "updated_at",
    ]  # fmt: skip
    assert await database.primary_key("user_budgets") == ["user_id"]
    assert await database.columns("request_logs") == [
        "id", "request_id", "user_id", "api_key_id", "endpoint", "method", "status_code",
        "duration_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "usage_source",
        "model", "upstream", "timestamp",
    ]  # fmt: skip
    assert await database.columns("admin_users") == [
        "id", "username", "hashed_password", "email", "is_active", "created_at", "last_login",
        "password_changed_at", "tokens_valid_after",
    ]  # fmt: skip
    assert await database.columns("audit_log") == [
        "id", "timestamp", "actor", "door", "action", "target", "before", "after",
    ]  # fmt: skip
    assert await database.columns("usage_hourly") == [
        "hour", "user_id", "api_key_id", "model", "endpoint", "requests", "errors",
        "rate_limited", "prompt_tokens", "completion_tokens", "duration_ms_sum",
    ]  # fmt: skip
    assert await database.columns("usage_hourly_latency") == [
        "hour", "user_id", "api_key_id", "model", "endpoint", "bucket", "count",
    ]  # fmt: skip
    assert await database.columns("key_changes") == ["version", "key_id", "changed_at"]
    for table in ("api_keys", "request_logs", "admin_users", "audit_log"):
        assert await database.primary_key(table) == ["id"]
    assert await database.primary_key("key_changes") == ["version"]
    assert await database.primary_key("usage_hourly") == [
        "hour", "user_id", "api_key_id", "model", "endpoint",
    ]  # fmt: skip
    assert await database.primary_key("usage_hourly_latency") == [
        "hour", "user_id", "api_key_id", "model", "endpoint", "bucket",
    ]  # fmt: skip
    applied = await database.rows("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == MIGRATIONS[database.kind]


async def test_sqlite_keeps_null_out_of_the_rollups_primary_keys(tmp_path: Path) -> None:
    """A NULL would defeat the UPSERT (SQLite, unlike PostgreSQL, lets NULLs into a
    primary key); and the file is in WAL mode."""
    database = SqliteDatabase(tmp_path / "llmgw.db")
    store = await database.open_store()
    await store.close()
    for table in ("usage_hourly", "usage_hourly_latency"):
        info = read_rows(database.path, f"PRAGMA table_info({table})")
        assert all(r["notnull"] for r in info if r["pk"])
    assert read_rows(database.path, "PRAGMA journal_mode")[0]["journal_mode"] == "wal"


async def test_reopening_applies_nothing_twice(database: Database) -> None:
    for _ in range(2):
        store = await database.open_store()
        await store.close()
    applied = await database.rows("SELECT * FROM schema_migrations")
    assert len(applied) == len(MIGRATIONS[database.kind])


async def test_a_database_from_a_newer_llmgw_is_refused(database: Database) -> None:
    store = await database.open_store()
    await store.close()
    await database.execute("INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01')")
    with pytest.raises(StoreError, match="upgrade llmgw"):
        await database.open_store()


async def test_key_hashes_are_unique_and_the_plaintext_is_not_stored(database: Database) -> None:
    store = await database.open_store()
    plaintext = "sk-internal-" + "x" * 43
    fields = {
        "key_hash": hash_key(plaintext),
        "key_prefix": plaintext[:16],
        "user_id": "alice",
        "tier": "free",
        "description": "",
        "expires_at": None,
        "allowed_models": ("m1",),
    }
    async with store.transaction() as tx:
        key = await tx.insert_key(**fields)  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists):
        async with store.transaction() as tx:
            await tx.insert_key(**fields)  # type: ignore[arg-type]
    assert (await store.get_key(key.id)) == key
    assert [k.id for k in await store.load_keys()] == [key.id]  # the second rolled back
    await store.close()
    if isinstance(database, SqliteDatabase):
        path = database.path
        assert plaintext.encode() not in path.read_bytes()
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or plaintext.encode() not in wal.read_bytes()
    rows = await database.rows("SELECT * FROM api_keys")
    assert len(rows) == 1
    assert plaintext not in repr(rows)


async def test_a_duplicate_admin_username_is_already_exists(database: Database) -> None:
    store = await database.open_store()
    try:
        async with store.transaction() as tx:
            await tx.insert_admin("root", "hash-1", None)
        with pytest.raises(AlreadyExists, match="root"):
            async with store.transaction() as tx:
                await tx.insert_admin("root", "hash-2", "x@example.com")
        admins = await store.list_admins()
        assert [(a.username, a.hashed_password) for a in admins] == [("root", "hash-1")]
    finally:
        await store.close()


async def test_a_batch_written_twice_adds_its_rows_and_rollups_once(database: Database) -> None:
    """A batch retried after its commit's acknowledgement was lost must change nothing."""
    store = await database.open_store()
    async with store.transaction() as tx:
        key = await tx.insert_key(
            key_hash="h", key_prefix="sk-internal-abcd", user_id="alice", tier="free",
            description="",
        )  # fmt: skip
    batch = [
        UsageRecord(f"req-{n}", "alice", key.id, "/v1/chat/completions", "POST",
                    429 if n == 3 else 200, 10.0 + n, 1.0, 5, 7, "reported", "m", "u",
                    1_800_000_000.0 + n)
        for n in range(5)
    ]  # fmt: skip
    assert await store.insert_request_logs(batch) == 5
    assert (
        await store.insert_request_logs(
            [*batch[2:], dataclasses.replace(batch[0], request_id="req-5", timestamp=1.8e9 + 9)]
        )
        == 1
    )
    used = await store.get_key(key.id)
    await store.close()
    assert len(await database.rows("SELECT * FROM request_logs")) == 6
    [cell] = await database.rows("SELECT * FROM usage_hourly")
    assert (cell["requests"], cell["rate_limited"], cell["prompt_tokens"]) == (6, 1, 30)
    [latency] = await database.rows("SELECT sum(count) AS n FROM usage_hourly_latency")
    assert latency["n"] == 5  # the 429 is not timed
    assert used is not None
    assert used.last_used_at == 1.8e9 + 9  # the newest row's time


@pytest.mark.parametrize("column", ["api_key_id", "user_id"])
async def test_tokens_since_reads_the_rollups_by_an_index(database: Database, column: str) -> None:
    """A budget's spent tokens come from one key's or user's cells (migration 7's
    indexes, made again by the rebuild by endpoint), never from a scan of every hour's:
    the plan of `tokens_since`'s rollup half (as the stores write it) names the index."""
    store = await database.open_store()
    await store.insert_request_logs(
        [
            UsageRecord(
                request_id=f"r{i}{endpoint}", user_id=f"u{i % 3}", api_key_id=i % 5,
                endpoint=endpoint, method="POST", status_code=200, duration_ms=1.0, ttft_ms=None,
                prompt_tokens=i, completion_tokens=1, usage_source="reported", model="m",
                upstream=None, timestamp=1_790_000_000.0 + 600 * i,
            )
            for i in range(200)
            for endpoint in ["/v1/chat/completions", "/v1/embeddings"][: 1 + i % 2]
        ]
    )  # fmt: skip
    assert await store.tokens_since(1_790_000_000.0 + 3000, key_id=1) == sum(
        (i + 1) * (1 + i % 2) for i in range(200) if i % 5 == 1 and i >= 5
    )
    await store.close()
    value: int | str = 1 if column == "api_key_id" else "u1"
    query = (
        "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_hourly"
        f" WHERE {column} = ? AND hour > ?"
    )
    index = "idx_usage_hourly_key_hour" if column == "api_key_id" else "idx_usage_hourly_user_hour"
    if isinstance(database, SqliteDatabase):
        plan = read_rows(database.path, f"EXPLAIN QUERY PLAN {query}", (value, "2026-09-21T00"))
        assert any(index in row["detail"] for row in plan), plan
        return
    assert isinstance(database, PostgresDatabase)
    connection = await asyncpg.connect(database.url)
    try:
        # A table this small is read whole whatever the indexes; forbidding that shows
        # whether an index can serve the query at all.
        await connection.execute("SET enable_seqscan = off")
        plan = await connection.fetchval(
            f"EXPLAIN (FORMAT JSON) {query.replace('?', '$1', 1).replace('?', '$2')}",
            value,
            "2026-09-21T00",
        )
    finally:
        await connection.close()
    assert index in str(plan), plan
