"""The store on SQLite (aiosqlite, WAL mode): the default, needing no other server.

Changes run one at a time on the writing connection (`transaction()`), so two admin
changes to one key, or an admin change and a ledger batch, never interleave. Reads run
on a connection of their own: in WAL mode they never wait for a ledger batch, nor a
batch for them.

Before each change the store checks that its path still names the file it has open
(`sqlite_file`). A file deleted meanwhile is still open, and holds everything so far:
the store refuses changes (`DatabaseGone`) rather than write what would vanish at the
next start, until a database is at the path again (`llmgw db backup PATH` writes this
one back there); then it opens that one and goes on. At shutdown it writes the open
database back to a path left empty, so that the ledger's last records have a home.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from .. import rollups
from ..api_types import AuditEntry, RequestRow, UsageReport, UserBudget
from ..keys import ApiKey
from ..ledger import RecordError, UsageRecord
from ..times import iso_utc
from .base import AdminUser, StoreHealth
from .rows import (
    ADMIN_COLUMNS,
    AUDIT_COLUMNS,
    REQUEST_COLUMNS,
    SELECT_KEYS,
    USAGE_GROUP_BY,
    USER_BUDGET_COLUMNS,
    admin_from_row,
    audit_entry,
    key_from_row,
    request_row,
    tokens_since_where,
    user_budget,
)
from .sqlite_file import Database
from .sqlite_rows import (
    FOLD_NEW_LOGS,
    INSERT_LOG,
    LAST_LOG_ID,
    RECORD_ERRORS,
    fold_upserts,
    folded_rows,
)
from .sqlite_tx import SqliteTransaction

# A look at the database that takes longer than this is a failed look.
_CHECK_TIMEOUT = 2.0


class SqliteStore:
    def __init__(self, database: Database, clock: Callable[[], float]) -> None:
        self._database = database
        self.name = str(database.path)
        self._clock = clock
        self._checked: float | None = None  # monotonic time of the last good look
        self._written: float | None = None  # ... and of the last ledger batch written
        self._error: str | None = None

    @classmethod
    async def open(cls, path: Path, clock: Callable[[], float] = time.time) -> SqliteStore:
        store = cls(await Database.open(path, clock), clock)
        store._checked = time.monotonic()
        return store

    async def close(self) -> None:
        await self._database.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._database.lock:
            await self._database.follow_path()  # DatabaseGone: nothing is written
            db = self._database.connection
            await db.execute("BEGIN IMMEDIATE")
            tx = SqliteTransaction(db, self._clock)
            try:
                yield tx
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
            for action in tx.after_commit:  # before the next change: in the same order
                action()
        self._looked_well()  # a change committed: the database works

    @property
    def _reader(self) -> aiosqlite.Connection:
        # Not kept: a database put in place of a deleted one gets connections of its own.
        return self._database.reader

    # --- keys and admin users ---------------------------------------------------------

    async def load_keys(
        self, *, user_id: str | None = None, tier: str | None = None, active: bool | None = None
    ) -> list[ApiKey]:
        where, params = [], []
        for column, value in (("user_id", user_id), ("tier", tier), ("is_active", active)):
            if value is not None:
                where.append(f"api_keys.{column} = ?")
                params.append(int(value) if isinstance(value, bool) else value)
        query = SELECT_KEYS
        if where:
            query += " WHERE " + " AND ".join(where)
        async with self._reader.execute(query + " ORDER BY api_keys.id", params) as cursor:
            return [key_from_row(row) async for row in cursor]

    async def get_key(self, key_id: int) -> ApiKey | None:
        row = await self._one(f"{SELECT_KEYS} WHERE api_keys.id = ?", (key_id,))
        return key_from_row(row) if row else None

    async def user_budget(self, user_id: str) -> UserBudget | None:
        row = await self._one(
            f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets WHERE user_id = ?", (user_id,)
        )
        return user_budget(row) if row else None

    async def user_budgets(self) -> list[UserBudget]:
        async with self._reader.execute(
            f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets ORDER BY user_id"
        ) as cursor:
            return [user_budget(row) async for row in cursor]

    async def key_version(self) -> int:
        row = await self._one("SELECT coalesce(max(version), 0) FROM key_changes")
        return int(row[0])

    async def listen_key_changes(
        self, on_change: Callable[[int], None], on_listening: Callable[[], None]
    ) -> None:
        """Nothing to hear: SQLite has one process, whose key changes apply on commit."""

    async def list_admins(self) -> list[AdminUser]:
        async with self._reader.execute(
            f"SELECT {ADMIN_COLUMNS} FROM admin_users ORDER BY id"
        ) as cursor:
            return [admin_from_row(row) async for row in cursor]

    async def get_admin(self, username: str) -> AdminUser | None:
        row = await self._one(
            f"SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = ?", (username,)
        )
        return admin_from_row(row) if row else None

    async def count_active_admins(self) -> int:
        row = await self._one("SELECT count(*) FROM admin_users WHERE is_active = 1")
        return int(row[0]) if row else 0

    # --- the ledger -------------------------------------------------------------------

    async def insert_request_logs(self, records: Sequence[UsageRecord]) -> int:
        """The rows are made, and folded into the rollup cells, in SQLite's thread (the
        parameters are a generator), so a batch costs the event loop next to nothing;
        one upsert per cell follows. Should a row have been written before (a batch
        retried after a lost commit), only the new rows are folded, by SQL."""
        try:
            async with self.transaction():
                db = self._database.connection
                async with db.execute(LAST_LOG_ID) as cursor:
                    row = await cursor.fetchone()
                last_id = row[0] if row else 0
                fold = rollups.Fold()
                cursor = await db.executemany(INSERT_LOG, folded_rows(records, fold))
                inserted = cursor.rowcount
                if inserted == len(records):
                    for statement, cells in fold_upserts(fold):
                        await db.executemany(statement, cells)
                else:
                    for statement in FOLD_NEW_LOGS:
                        await db.execute(statement, (last_id,))
        except RECORD_ERRORS as exc:
            raise RecordError(f"{type(exc).__name__}: {exc}") from exc
        self._written = time.monotonic()
        return inserted

    async def recent_requests(
        self,
        limit: int,
        *,
        after_id: int = 0,
        user_id: str | None = None,
        status: tuple[int, int] | None = None,
        except_status: int | None = None,
    ) -> list[RequestRow]:
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
            f"SELECT {REQUEST_COLUMNS} FROM request_logs WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        async with self._reader.execute(query, (*params, limit)) as cursor:
            return [request_row(row) async for row in cursor]

    async def usage_summary(self, *, days: int, by: rollups.Grouping, now: float) -> UsageReport:
        since = rollups.window_start(days, now)
        hour = iso_utc(since)[:13]
        group = USAGE_GROUP_BY[by]
        async with self._reader.execute(
            f"SELECT {group}, sum(requests), sum(errors), sum(rate_limited),"
            " sum(prompt_tokens), sum(completion_tokens), total(duration_ms_sum),"
            " max(user_id) FROM usage_hourly WHERE hour >= ? GROUP BY 1",
            (hour,),
        ) as cursor:
            groups = [
                rollups.GroupTotals(name, (requests, errors, limited, prompt, done), spent, user)
                async for name, requests, errors, limited, prompt, done, spent, user in cursor
            ]
        histograms: dict[Any, Counter[int]] = {}
        async with self._reader.execute(
            f"SELECT {group}, bucket, sum(count) FROM usage_hourly_latency"
            " WHERE hour >= ? GROUP BY 1, 2",
            (hour,),
        ) as cursor:
            async for name, bucket, count in cursor:
                histograms.setdefault(name, Counter())[bucket] = count
        prefixes: dict[int, str] = {}
        if by == "key":
            async with self._reader.execute("SELECT id, key_prefix FROM api_keys") as cursor:
                prefixes = {key_id: prefix async for key_id, prefix in cursor}
        return rollups.summarize(groups, histograms, prefixes, days=days, by=by, since=since)

    async def tokens_since(
        self, since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int:
        column, value, at, hour, next_hour = tokens_since_where(since, key_id, user_id)
        row = await self._one(
            "SELECT (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)"
            f" FROM usage_hourly WHERE {column} = ?1 AND hour > ?2)"
            " + (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)"
            f" FROM request_logs WHERE {column} = ?1 AND timestamp >= ?3 AND timestamp < ?4)",
            (value, hour, at, next_hour),
        )
        return int(row[0])

    async def prune_request_logs(self, before: float, chunk: int = 10_000) -> int:
        """A chunk per transaction, so the ledger writer is never held up for long."""
        cutoff = iso_utc(before)
        deleted = 0
        while True:
            async with self.transaction():
                cursor = await self._database.connection.execute(
                    "DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs"
                    " WHERE timestamp < ? ORDER BY timestamp LIMIT ?)",
                    (cutoff, chunk),
                )
                count = cursor.rowcount
            deleted += count
            if count < chunk:
                return deleted

    # --- audit ------------------------------------------------------------------------

    async def list_audit(self, limit: int, action: str | None = None) -> list[AuditEntry]:
        query = f"SELECT {AUDIT_COLUMNS} FROM audit_log"
        params: list[Any] = []
        if action:
            query += " WHERE substr(action, 1, ?) = ?"
            params += [len(action), action]
        async with self._reader.execute(
            query + " ORDER BY id DESC LIMIT ?", (*params, limit)
        ) as cursor:
            return [audit_entry(row) async for row in cursor]

    # --- the database itself ----------------------------------------------------------

    async def backup(self) -> Path:
        return await self._database.backup()

    async def write_back(self) -> None:
        await self._database.write_back()

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.look()

    async def look(self) -> None:
        """Is the file where it belongs, and does it answer? (For `health`.)"""
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT):
                await self._database.check()
                await self._one("SELECT 1")
        except TimeoutError:
            self._error = f"no answer within {_CHECK_TIMEOUT:g} s"
        except Exception as exc:  # any database failure is reported, not raised
            self._error = f"{type(exc).__name__}: {exc}"
        else:
            self._looked_well()

    def _looked_well(self) -> None:
        self._error = None
        self._checked = time.monotonic()

    async def check(self) -> None:
        await self._database.check()

    def health(self) -> StoreHealth:
        now = time.monotonic()
        error = self._database.problem() or self._error
        return StoreHealth(
            ok=error is None,
            error=error,
            checked_s_ago=None if self._checked is None else round(now - self._checked, 1),
            written_s_ago=None if self._written is None else round(now - self._written, 1),
        )

    async def _one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        async with self._reader.execute(query, params) as cursor:
            return await cursor.fetchone()
