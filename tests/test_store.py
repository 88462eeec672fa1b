"""The schema a blank database ends with, and the store's guarantees."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from llmgw.keys import hash_key
from llmgw.ledger import UsageRecord
from llmgw.store import AlreadyExists, SqliteStore, StoreError
from llmgw.store.sqlite_migrations import MIGRATIONS

from .conftest import read_rows


def columns(path: Path, table: str) -> list[str]:
    return [row["name"] for row in read_rows(path, f"PRAGMA table_info({table})")]


async def test_a_blank_database_gets_the_seed_tables_and_records_its_migrations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db" / "llmgw.db"
    store = await SqliteStore.open(path)
    await store.close()
    assert columns(path, "api_keys") == [
        "id", "key_hash", "key_prefix", "user_id", "tier", "description", "is_active",
        "created_at", "updated_at", "expires_at", "last_used_at", "allowed_models",
        "requests_per_minute", "requests_per_hour",
    ]  # fmt: skip
    assert columns(path, "request_logs") == [
        "id", "request_id", "user_id", "api_key_id", "endpoint", "method", "status_code",
        "duration_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "usage_source",
        "model", "upstream", "timestamp",
    ]  # fmt: skip
    assert columns(path, "admin_users") == [
        "id", "username", "hashed_password", "email", "is_active", "created_at", "last_login",
        "password_changed_at", "tokens_valid_after",
    ]  # fmt: skip
    assert columns(path, "audit_log") == [
        "id", "timestamp", "actor", "door", "action", "target", "before", "after",
    ]  # fmt: skip
    assert columns(path, "usage_hourly") == [
        "hour", "user_id", "api_key_id", "model", "requests", "errors", "rate_limited",
        "prompt_tokens", "completion_tokens", "duration_ms_sum",
    ]  # fmt: skip
    assert columns(path, "usage_hourly_latency") == [
        "hour", "user_id", "api_key_id", "model", "bucket", "count",
    ]  # fmt: skip
    for table, key in (
        ("usage_hourly", ["hour", "user_id", "api_key_id", "model"]),
        ("usage_hourly_latency", ["hour", "user_id", "api_key_id", "model", "bucket"]),
    ):
        info = read_rows(path, f"PRAGMA table_info({table})")
        assert [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]] == key
        assert all(r["notnull"] for r in info if r["pk"])  # a NULL would defeat the UPSERT
    applied = read_rows(path, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [(m.version, m.name) for m in MIGRATIONS]
    assert read_rows(path, "PRAGMA journal_mode")[0]["journal_mode"] == "wal"


async def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.db"
    for _ in range(2):
        store = await SqliteStore.open(path)
        await store.close()
    assert len(read_rows(path, "SELECT * FROM schema_migrations")) == len(MIGRATIONS)


async def test_a_database_from_a_newer_llmgw_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.db"
    store = await SqliteStore.open(path)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01')")
    with pytest.raises(StoreError, match="upgrade llmgw"):
        await SqliteStore.open(path)


async def test_key_hashes_are_unique_and_the_plaintext_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.db"
    store = await SqliteStore.open(path)
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
    await store.close()
    assert plaintext.encode() not in path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or plaintext.encode() not in wal.read_bytes()


async def test_a_batch_written_twice_adds_its_rows_and_rollups_once(tmp_path: Path) -> None:
    """A batch retried after its commit's acknowledgement was lost must change nothing."""
    path = tmp_path / "llmgw.db"
    store = await SqliteStore.open(path)
    batch = [
        UsageRecord(f"req-{n}", "alice", 1, "/v1/chat/completions", "POST",
                    429 if n == 3 else 200, 10.0 + n, 1.0, 5, 7, "reported", "m", "u",
                    1_800_000_000.0 + n)
        for n in range(5)
    ]  # fmt: skip
    assert await store.insert_request_logs(batch) == 5
    assert (
        await store.insert_request_logs(
            [*batch[2:], dataclasses.replace(batch[0], request_id="req-5")]
        )
        == 1
    )
    await store.close()
    assert len(read_rows(path, "SELECT * FROM request_logs")) == 6
    [cell] = read_rows(path, "SELECT * FROM usage_hourly")
    assert (cell["requests"], cell["rate_limited"], cell["prompt_tokens"]) == (6, 1, 30)
    [latency] = read_rows(path, "SELECT sum(count) AS n FROM usage_hourly_latency")
    assert latency["n"] == 5  # the 429 is not timed
