"""The one module that speaks SQL: keys, admin users, the usage ledger, the audit log.

SQLite through aiosqlite in WAL mode, so readers (usage statistics, backups) never
block the ledger writer. Handlers and the ledger call methods here; nothing else
builds a query. Every change runs in `transaction()`: one at a time on the one
connection, so two admin changes to one key, or an admin change and a ledger batch,
never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from . import rollups
from .keys import ApiKey
from .ledger import RecordError, UsageRecord
from .migrations import migrate
from .times import iso_utc, parse_iso

_KEY_COLUMNS = (
    "id, key_hash, key_prefix, user_id, tier, description, is_active, created_at,"
    " updated_at, expires_at, last_used_at, allowed_models, requests_per_minute,"
    " requests_per_hour"
)
# What an update may change, and how each value is stored.
_KEY_UPDATABLE: Mapping[str, Callable[[Any], Any]] = {
    "tier": str,
    "description": str,
    "is_active": int,
    "expires_at": lambda v: None if v is None else iso_utc(v),
    "allowed_models": lambda v: None if v is None else orjson.dumps(v).decode(),
    "requests_per_minute": lambda v: v,
    "requests_per_hour": lambda v: v,
    "key_hash": str,
    "key_prefix": str,
}
# What SQLite raises for a value it cannot store (an integer past 2^63, text that is not
# UTF-8) or a row a constraint refuses: the records' fault, not the database's, so the
# ledger sets such a record aside instead of retrying it for ever.
_RECORD_ERRORS = (OverflowError, UnicodeEncodeError, sqlite3.IntegrityError, sqlite3.DataError)
_ADMIN_COLUMNS = (
    "id, username, hashed_password, email, is_active, created_at, last_login, password_changed_at,"
    " tokens_valid_after"
)


@dataclass(frozen=True, slots=True)
class AdminUser:
    id: int
    username: str
    hashed_password: str = field(repr=False)
    email: str | None
    is_active: bool
    created_at: str
    last_login: str | None
    password_changed_at: str | None
    tokens_valid_after: str | None  # tokens issued before it are refused

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "is_active": self.is_active,
            "created_at": self.created_at,
            "last_login": self.last_login,
            "password_changed_at": self.password_changed_at,
        }


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made an admin change, and through which door."""

    name: str
    door: str


class Transaction:
    def __init__(self) -> None:
        self._after_commit: list[Callable[[], None]] = []

    def on_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the transaction has committed, before the next one starts:
        in-memory state changes in the same order as the database."""
        self._after_commit.append(action)


class Store:
    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            tx = Transaction()
            try:
                yield tx
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
            for action in tx._after_commit:
                action()

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

    async def load_keys(
        self, *, user_id: str | None = None, tier: str | None = None, active: bool | None = None
    ) -> list[ApiKey]:
        where, params = [], []
        for column, value in (("user_id", user_id), ("tier", tier), ("is_active", active)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(int(value) if isinstance(value, bool) else value)
        query = f"SELECT {_KEY_COLUMNS} FROM api_keys"
        if where:
            query += " WHERE " + " AND ".join(where)
        async with self._db.execute(query + " ORDER BY id", params) as cursor:
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
        expires_at: float | None = None,
        allowed_models: tuple[str, ...] | None = None,
        requests_per_minute: int | None = None,
        requests_per_hour: int | None = None,
    ) -> ApiKey:
        now = iso_utc(self._clock())
        async with self._db.execute(
            "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, description,"
            " is_active, created_at, updated_at, expires_at, allowed_models,"
            " requests_per_minute, requests_per_hour)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)"
            f" RETURNING {_KEY_COLUMNS}",
            (
                key_hash,
                key_prefix,
                user_id,
                tier,
                description,
                now,
                now,
                _KEY_UPDATABLE["expires_at"](expires_at),
                _KEY_UPDATABLE["allowed_models"](allowed_models),
                requests_per_minute,
                requests_per_hour,
            ),
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None  # RETURNING always yields the inserted row
        return _key_from_row(row)

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> ApiKey | None:
        """Set only the columns named in `changes`: concurrent updates of different
        fields of one key all land."""
        columns = [name for name in changes if name in _KEY_UPDATABLE]
        if len(columns) != len(changes):
            raise ValueError(f"not updatable: {sorted(set(changes) - set(columns))}")
        assignments = ", ".join(f"{name} = ?" for name in [*columns, "updated_at"])
        params = [_KEY_UPDATABLE[name](changes[name]) for name in columns]
        async with self._db.execute(
            f"UPDATE api_keys SET {assignments} WHERE id = ? RETURNING {_KEY_COLUMNS}",
            [*params, iso_utc(self._clock()), key_id],
        ) as cursor:
            row = await cursor.fetchone()
        return _key_from_row(row) if row else None

    async def delete_key(self, key_id: int) -> ApiKey | None:
        async with self._db.execute(
            f"DELETE FROM api_keys WHERE id = ? RETURNING {_KEY_COLUMNS}", (key_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _key_from_row(row) if row else None

    # --- admin users ----------------------------------------------------------------

    async def list_admins(self) -> list[AdminUser]:
        async with self._db.execute(
            f"SELECT {_ADMIN_COLUMNS} FROM admin_users ORDER BY id"
        ) as cursor:
            return [_admin_from_row(row) async for row in cursor]

    async def get_admin(self, username: str) -> AdminUser | None:
        async with self._db.execute(
            f"SELECT {_ADMIN_COLUMNS} FROM admin_users WHERE username = ?", (username,)
        ) as cursor:
            row = await cursor.fetchone()
        return _admin_from_row(row) if row else None

    async def count_active_admins(self) -> int:
        async with self._db.execute(
            "SELECT count(*) FROM admin_users WHERE is_active = 1"
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def insert_admin(
        self, username: str, hashed_password: str, email: str | None
    ) -> AdminUser:
        now = iso_utc(self._clock())
        async with self._db.execute(
            "INSERT INTO admin_users (username, hashed_password, email, is_active, created_at,"
            f" password_changed_at) VALUES (?, ?, ?, 1, ?, ?) RETURNING {_ADMIN_COLUMNS}",
            (username, hashed_password, email, now, now),
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return _admin_from_row(row)

    async def update_admin(
        self,
        username: str,
        *,
        hashed_password: str | None = None,
        is_active: bool | None = None,
        logged_in: bool = False,
    ) -> AdminUser | None:
        now = iso_utc(self._clock())
        sets: list[str] = []
        params: list[Any] = []
        if hashed_password is not None:
            sets += ["hashed_password = ?", "password_changed_at = ?"]
            params += [hashed_password, now]
        if is_active is not None:
            sets.append("is_active = ?")
            params.append(int(is_active))
        if hashed_password is not None or is_active is False:
            # Every token issued so far dies, and stays dead if the user is enabled again.
            sets.append("tokens_valid_after = ?")
            params.append(now)
        if logged_in:
            sets.append("last_login = ?")
            params.append(now)
        if not sets:
            return await self.get_admin(username)
        async with self._db.execute(
            f"UPDATE admin_users SET {', '.join(sets)} WHERE username = ?"
            f" RETURNING {_ADMIN_COLUMNS}",
            [*params, username],
        ) as cursor:
            row = await cursor.fetchone()
        return _admin_from_row(row) if row else None

    # --- ledger -------------------------------------------------------------------

    async def insert_request_logs(self, records: Sequence[UsageRecord]) -> None:
        """One transaction: the rows, each key's `last_used_at`, and the rollups."""
        last_used: dict[int, float] = {}
        for record in records:
            if record.api_key_id is not None:
                last_used[record.api_key_id] = max(
                    record.timestamp, last_used.get(record.api_key_id, 0.0)
                )
        try:
            await self._insert_request_logs(records, last_used)
        except _RECORD_ERRORS as exc:
            raise RecordError(f"{type(exc).__name__}: {exc}") from exc

    async def _insert_request_logs(
        self, records: Sequence[UsageRecord], last_used: Mapping[int, float]
    ) -> None:
        async with self.transaction():
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
            await rollups.add(self._db, records)

    async def recent_requests(
        self,
        limit: int,
        *,
        after_id: int = 0,
        user_id: str | None = None,
        status: tuple[int, int] | None = None,
        except_status: int | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ledger rows (newest first) with an id above `after_id`, optionally
        of one user and with a status in [status[0], status[1]] other than `except_status`."""
        where = ["id > ?"]
        params: list[Any] = [after_id]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if status is not None:
            where.append("status_code BETWEEN ? AND ?")
            params += list(status)
        if except_status is not None:
            where.append("status_code != ?")
            params.append(except_status)
        query = (
            "SELECT id, request_id, timestamp, user_id, api_key_id, endpoint, model, status_code,"
            " prompt_tokens, completion_tokens, usage_source, duration_ms, ttft_ms, upstream"
            f" FROM request_logs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        )
        async with self._db.execute(query, [*params, limit]) as cursor:
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) async for row in cursor]

    # --- audit --------------------------------------------------------------------

    async def record_audit(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        """Call inside the transaction that makes the change it describes."""
        await self._db.execute(
            "INSERT INTO audit_log (timestamp, actor, door, action, target, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                iso_utc(self._clock()),
                actor.name,
                actor.door,
                action,
                target,
                None if before is None else orjson.dumps(before).decode(),
                None if after is None else orjson.dumps(after).decode(),
            ),
        )

    async def list_audit(self, limit: int, action: str | None = None) -> list[dict[str, Any]]:
        """The newest audit rows first; `action` filters by prefix (`key.`, `admin.`)."""
        query = "SELECT id, timestamp, actor, door, action, target, before, after FROM audit_log"
        params: list[Any] = []
        if action:
            query += " WHERE substr(action, 1, ?) = ?"
            params += [len(action), action]
        async with self._db.execute(
            query + " ORDER BY id DESC LIMIT ?", [*params, limit]
        ) as cursor:
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) async for row in cursor]
        for row in rows:
            for name in ("before", "after"):
                row[name] = orjson.loads(row[name]) if row[name] else None
        return rows

    # --- retention ----------------------------------------------------------------

    async def prune_request_logs(self, before: float, chunk: int = 10_000) -> int:
        """Delete ledger rows older than `before`, a chunk per transaction so the
        ledger writer is never held up for long. Returns how many were deleted."""
        cutoff = iso_utc(before)
        deleted = 0
        while True:
            async with self.transaction():
                cursor = await self._db.execute(
                    "DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs"
                    " WHERE timestamp < ? ORDER BY timestamp LIMIT ?)",
                    (cutoff, chunk),
                )
                count = cursor.rowcount
            deleted += count
            if count < chunk:
                return deleted


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
        requests_per_minute,
        requests_per_hour,
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
        requests_per_minute=requests_per_minute,
        requests_per_hour=requests_per_hour,
    )


def _admin_from_row(row: Sequence[Any]) -> AdminUser:
    admin_id, username, hashed, email, active, created, last_login, changed, valid_after = row
    return AdminUser(
        admin_id, username, hashed, email, bool(active), created, last_login, changed, valid_after
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
