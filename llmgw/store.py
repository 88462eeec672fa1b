"""The one module that speaks SQL: keys, the usage ledger and the audit log.

SQLite through aiosqlite in WAL mode, so readers (usage statistics, backups) never
block the ledger writer. Handlers and the ledger call methods here; nothing else
builds a query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from .keys import ApiKey
from .ledger import UsageRecord
from .migrations import migrate
from .times import iso_utc, parse_iso

_KEY_COLUMNS = (
    "id, key_hash, key_prefix, user_id, tier, description, is_active, created_at,"
    " updated_at, expires_at, last_used_at, allowed_models"
)


class Store:
    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    async def open(cls, path: Path, clock: Callable[[], float] = time.time) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode loses no committed transaction on a crash of the
            # process, only (possibly) the last ones on a power cut.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await migrate(db, clock)
        except BaseException:
            await db.close()
            raise
        return cls(db, clock)

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        async with self._db.execute("SELECT 1") as cursor:
            await cursor.fetchone()

    # --- keys ---------------------------------------------------------------------

    async def load_keys(self) -> list[ApiKey]:
        async with self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys") as cursor:
            return [_key_from_row(row) async for row in cursor]

    async def get_key(self, key_id: int) -> ApiKey | None:
        async with self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?",
            (key_id,),
        ) as cursor:
            row = await cursor.fetchone()
        return _key_from_row(row) if row else None

    async def insert_key(
        self,
        *,
        key_hash: str,
        key_prefix: str,
        user_id: str,
        tier: str,
        description: str,
        expires_at: float | None,
        allowed_models: tuple[str, ...] | None,
    ) -> ApiKey:
        now = iso_utc(self._clock())
        async with self._db.execute(
            "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, description,"
            " is_active, created_at, updated_at, expires_at, allowed_models)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
            f" RETURNING {_KEY_COLUMNS}",
            (
                key_hash,
                key_prefix,
                user_id,
                tier,
                description,
                now,
                now,
                None if expires_at is None else iso_utc(expires_at),
                None if allowed_models is None else orjson.dumps(allowed_models).decode(),
            ),
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None  # RETURNING always yields the inserted row
        return _key_from_row(row)

    async def set_key_active(self, key_id: int, active: bool) -> ApiKey | None:
        async with self._db.execute(
            "UPDATE api_keys SET is_active = ?, updated_at = ? WHERE id = ?"
            f" RETURNING {_KEY_COLUMNS}",
            (int(active), iso_utc(self._clock()), key_id),
        ) as cursor:
            row = await cursor.fetchone()
        return _key_from_row(row) if row else None

    # --- ledger -------------------------------------------------------------------

    async def insert_request_logs(self, records: Sequence[UsageRecord]) -> None:
        """One transaction: the rows, and each key's `last_used_at` from them."""
        last_used: dict[int, float] = {}
        for record in records:
            if record.api_key_id is not None:
                last_used[record.api_key_id] = max(
                    record.timestamp, last_used.get(record.api_key_id, 0.0)
                )
        await self._db.execute("BEGIN")
        try:
            await self._db.executemany(
                "INSERT INTO request_logs (request_id, user_id, api_key_id, endpoint, method,"
                " status_code, duration_ms, ttft_ms, prompt_tokens, completion_tokens,"
                " usage_source, model, upstream, timestamp)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_log_row(r) for r in records],
            )
            await self._db.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ''), ?)"
                " WHERE id = ?",
                [(iso_utc(ts), key_id) for key_id, ts in last_used.items()],
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    # --- audit --------------------------------------------------------------------

    async def record_audit(
        self,
        *,
        actor: str,
        door: str,
        action: str,
        target: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO audit_log (timestamp, actor, door, action, target, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                iso_utc(self._clock()),
                actor,
                door,
                action,
                target,
                None if before is None else orjson.dumps(before).decode(),
                None if after is None else orjson.dumps(after).decode(),
            ),
        )


def _key_from_row(row: Sequence[Any]) -> ApiKey:
    (
        key_id,
        key_hash,
        key_prefix,
        user_id,
        tier,
        description,
        is_active,
        created_at,
        updated_at,
        expires_at,
        last_used_at,
        allowed_models,
    ) = row
    return ApiKey(
        id=key_id,
        key_hash=key_hash,
        key_prefix=key_prefix,
        user_id=user_id,
        tier=tier,
        description=description,
        is_active=bool(is_active),
        created_at=parse_iso(created_at),
        updated_at=parse_iso(updated_at),
        expires_at=parse_iso(expires_at) if expires_at else None,
        last_used_at=parse_iso(last_used_at) if last_used_at else None,
        allowed_models=tuple(orjson.loads(allowed_models)) if allowed_models else None,
    )


def _log_row(r: UsageRecord) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.user_id,
        r.api_key_id,
        r.endpoint,
        r.method,
        r.status_code,
        round(r.duration_ms, 3),
        None if r.ttft_ms is None else round(r.ttft_ms, 3),
        r.prompt_tokens,
        r.completion_tokens,
        r.usage_source,
        r.model,
        r.upstream,
        iso_utc(r.timestamp),
    )
