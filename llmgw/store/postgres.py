"""The store on PostgreSQL (asyncpg, a pool): for several replicas of the gateway
sharing one database.

The same tables, values and behaviour as on SQLite (`sqlite.py`), through the same
`Store` interface: timestamps are the same text, rollups are folded by the same
definitions, and every read returns what SQLite's returns. Admin changes of this
process run one at a time, as on SQLite, so that in-memory state follows the database
in order (`on_commit`); between replicas, PostgreSQL's row locks order them. Reads and
ledger batches take connections of their own from the pool, never waiting behind a
change.

A database that cannot be reached makes every call raise `StoreUnavailable` naming it
(`postgres_pool`); the pool reconnects by itself once the server is back.

Key changes are heard on a connection of their own, outside the pool (LISTEN belongs
to a session, and a pooled connection is reset when given back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from .. import rollups
from ..api_types import AuditEntry, RequestRow, UsageReport, UserBudget
from ..keys import ApiKey
from ..ledger import UsageRecord
from ..times import iso_utc
from .base import AdminUser, StoreHealth, StoreUnavailable, Unsupported
from .postgres_ledger import INSERT_AND_FOLD, log_columns
from .postgres_migrations import migrate
from .postgres_pool import (
    CONNECT_TIMEOUT,
    Connection,
    describe,
    open_pool,
    refused_records,
    unavailable,
)
from .postgres_tx import KEY_CHANNEL, PostgresTransaction
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

# A look at the database that takes longer than this is a failed look.
_CHECK_TIMEOUT = 2.0
# Seconds `close` waits for connections in use before cutting them off.
_CLOSE_TIMEOUT = 5.0


# How the key listener's session is named in pg_stat_activity.
KEY_LISTENER = "llmgw key listener"


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, name: str, clock: Callable[[], float], url: str) -> None:
        self._pool = pool
        self._url = url
        self.name = name
        self._clock = clock
        self._changes = asyncio.Lock()  # this process's changes, one at a time
        self._checked: float | None = None  # monotonic time of the last good look
        self._written: float | None = None  # ... and of the last ledger batch written
        self._error: str | None = None

    @classmethod
    async def open(cls, url: str, clock: Callable[[], float] = time.time) -> PostgresStore:
        """Connect, and bring the schema up to date (once, however many replicas start
        together)."""
        name = describe(url)
        pool = await open_pool(url, name)
        try:
            with unavailable(name):
                async with pool.acquire() as connection:
                    await migrate(connection, clock)
        except BaseException:
            pool.terminate()
            raise
        store = cls(pool, name, clock, url)
        store._checked = time.monotonic()
        return store

    async def close(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._changes:
            with unavailable(self.name):
                async with self._pool.acquire() as connection, connection.transaction():
                    tx = PostgresTransaction(connection, self._clock)
                    yield tx
            for action in tx.after_commit:  # before the next change: in the same order
                action()
        self._looked_well()  # a change committed: the database works

    async def _fetch(self, query: str, *params: Any) -> list[asyncpg.Record]:
        with unavailable(self.name):
            return await self._pool.fetch(query, *params)

    async def _one(self, query: str, *params: Any) -> asyncpg.Record | None:
        with unavailable(self.name):
            return await self._pool.fetchrow(query, *params)

    # --- keys and admin users ---------------------------------------------------------

    async def load_keys(
        self, *, user_id: str | None = None, tier: str | None = None, active: bool | None = None
    ) -> list[ApiKey]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("user_id", user_id), ("tier", tier), ("is_active", active)):
            if value is not None:
                params.append(value)
                where.append(f"api_keys.{column} = ${len(params)}")
        query = SELECT_KEYS
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = await self._fetch(query + " ORDER BY api_keys.id", *params)
        return [key_from_row(row) for row in rows]

    async def get_key(self, key_id: int) -> ApiKey | None:
        row = await self._one(f"{SELECT_KEYS} WHERE api_keys.id = $1", key_id)
        return key_from_row(row) if row else None

    async def user_budget(self, user_id: str) -> UserBudget | None:
        row = await self._one(
            f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets WHERE user_id = $1", user_id
        )
        return user_budget(row) if row else None

    async def user_budgets(self) -> list[UserBudget]:
        rows = await self._fetch(f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets ORDER BY user_id")
        return [user_budget(row) for row in rows]

    async def key_version(self) -> int:
        row = await self._one("SELECT coalesce(max(version), 0) FROM key_changes")
        return int(row[0]) if row else 0

    async def listen_key_changes(
        self, on_change: Callable[[int], None], on_listening: Callable[[], None]
    ) -> None:
        with unavailable(self.name):
            connection = await asyncpg.connect(
                self._url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": KEY_LISTENER},
            )
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def terminated(_: object) -> None:
            if not lost.done():
                lost.set_result(None)

        def notified(_: Connection, pid: int, channel: str, payload: object) -> None:
            if isinstance(payload, str) and payload.isdigit():  # anyone may NOTIFY
                on_change(int(payload))

        connection.add_termination_listener(terminated)
        try:
            with unavailable(self.name):
                await connection.add_listener(KEY_CHANNEL, notified)
            on_listening()
            await lost
        finally:
            connection.terminate()
        raise StoreUnavailable(f"the {self.name} closed the connection listening for key changes")

    async def list_admins(self) -> list[AdminUser]:
        rows = await self._fetch(f"SELECT {ADMIN_COLUMNS} FROM admin_users ORDER BY id")
        return [admin_from_row(row) for row in rows]

    async def get_admin(self, username: str) -> AdminUser | None:
        row = await self._one(
            f"SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = $1", username
        )
        return admin_from_row(row) if row else None

    async def count_active_admins(self) -> int:
        row = await self._one("SELECT count(*) FROM admin_users WHERE is_active")
        return int(row[0]) if row else 0

    # --- the ledger -------------------------------------------------------------------

    async def insert_request_logs(self, records: Sequence[UsageRecord]) -> int:
        """One statement, so one transaction (`postgres_ledger`)."""
        columns = log_columns(records)
        with unavailable(self.name), refused_records():
            inserted: int = await self._pool.fetchval(INSERT_AND_FOLD, *columns)
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
        params: list[Any] = [after_id]
        where = ["id > $1"]
        if user_id is not None:
            params.append(user_id)
            where.append(f"user_id = ${len(params)}")
        if status is not None:
            params += list(status)
            where.append(f"status_code BETWEEN ${len(params) - 1} AND ${len(params)}")
        if except_status is not None:
            params.append(except_status)
            where.append(f"status_code != ${len(params)}")
        params.append(limit)
        rows = await self._fetch(
            f"SELECT {REQUEST_COLUMNS} FROM request_logs WHERE {' AND '.join(where)}"
            f" ORDER BY id DESC LIMIT ${len(params)}",
            *params,
        )
        return [request_row(row) for row in rows]

    async def usage_summary(self, *, days: int, by: rollups.Grouping, now: float) -> UsageReport:
        since = rollups.window_start(days, now)
        hour = iso_utc(since)[:13]
        group = USAGE_GROUP_BY[by]
        # sum() of bigints is numeric in PostgreSQL: cast back, to read ints as SQLite's.
        rows = await self._fetch(
            f"SELECT {group}, sum(requests)::bigint, sum(errors)::bigint,"
            " sum(rate_limited)::bigint, sum(prompt_tokens)::bigint,"
            " sum(completion_tokens)::bigint, coalesce(sum(duration_ms_sum), 0),"
            " max(user_id) FROM usage_hourly WHERE hour >= $1 GROUP BY 1",
            hour,
        )
        groups = [
            rollups.GroupTotals(name, (requests, errors, limited, prompt, done), spent, user)
            for name, requests, errors, limited, prompt, done, spent, user in rows
        ]
        histograms: dict[Any, Counter[int]] = {}
        for name, bucket, count in await self._fetch(
            f"SELECT {group}, bucket, sum(count)::bigint FROM usage_hourly_latency"
            " WHERE hour >= $1 GROUP BY 1, 2",
            hour,
        ):
            histograms.setdefault(name, Counter())[bucket] = count
        prefixes: dict[int, str] = {}
        if by == "key":
            rows = await self._fetch("SELECT id, key_prefix FROM api_keys")
            prefixes = {key_id: prefix for key_id, prefix in rows}
        return rollups.summarize(groups, histograms, prefixes, days=days, by=by, since=since)

    async def tokens_since(
        self, since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int:
        column, value, at, hour, next_hour = tokens_since_where(since, key_id, user_id)
        # sum() of bigints is numeric: cast back to read an int.
        row = await self._one(
            "SELECT ((SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)"
            f" FROM usage_hourly WHERE {column} = $1 AND hour > $2)"
            " + (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)"
            f" FROM request_logs WHERE {column} = $1 AND timestamp >= $3 AND timestamp < $4)"
            ")::bigint",
            value,
            hour,
            at,
            next_hour,
        )
        return int(row[0]) if row else 0

    async def prune_request_logs(self, before: float, chunk: int = 10_000) -> int:
        """A chunk per transaction, so no lock is held for long."""
        cutoff = iso_utc(before)
        deleted = 0
        while True:
            with unavailable(self.name):
                status = await self._pool.execute(
                    "DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs"
                    " WHERE timestamp < $1 ORDER BY timestamp LIMIT $2)",
                    cutoff,
                    chunk,
                )
            count = int(status.rpartition(" ")[2])  # "DELETE 42"
            deleted += count
            if count < chunk:
                return deleted

    # --- audit ------------------------------------------------------------------------

    async def list_audit(self, limit: int, action: str | None = None) -> list[AuditEntry]:
        if action:
            rows = await self._fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE starts_with(action, $1)"
                " ORDER BY id DESC LIMIT $2",
                action,
                limit,
            )
        else:
            rows = await self._fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT $1", limit
            )
        return [audit_entry(row) for row in rows]

    # --- the database itself ----------------------------------------------------------

    async def backup(self) -> Path:
        raise Unsupported(
            f"the gateway backs up SQLite files only; for the {self.name}, use pg_dump "
            "(pg_dump --format=custom --file=llmgw.dump DBNAME), which takes a consistent "
            "copy while the gateway keeps writing"
        )

    async def write_back(self) -> None:
        """Nothing to do: the database is the server's, not a file that can go away."""

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.look()

    async def look(self) -> None:
        """Does the database answer? (For `health`.)"""
        try:
            await self.check()
        except Exception as exc:  # any database failure is reported, not raised
            self._error = str(exc)
        else:
            self._looked_well()

    def _looked_well(self) -> None:
        self._error = None
        self._checked = time.monotonic()

    async def check(self) -> None:
        with unavailable(self.name):
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT):
                    await self._pool.fetchval("SELECT 1")
            except TimeoutError:
                raise TimeoutError(f"no answer within {_CHECK_TIMEOUT:g} s") from None

    def health(self) -> StoreHealth:
        now = time.monotonic()
        return StoreHealth(
            ok=self._error is None,
            error=self._error,
            checked_s_ago=None if self._checked is None else round(now - self._checked, 1),
            written_s_ago=None if self._written is None else round(now - self._written, 1),
        )
