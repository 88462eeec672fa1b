"""Moving over: a SQLite database copied into an empty PostgreSQL database (`llmgw db
copy`), offline, with every row, id and timestamp as it was.

The SQLite file is opened in exclusive locking mode for the whole copy: a gateway
still running on it holds it open, and the copy refuses it (stop the gateway first);
and none can start on it meanwhile. PostgreSQL's schema is made by its own migrations
(so its `schema_migrations` is its own); the rows go in with COPY, in batches, in one
transaction that also checks the target held no llmgw data, moves the id sequences
past the copied ids, and counts the rows of each table on both sides: a copy whose
counts differ is rolled back, so the target is left empty to try again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from .base import StoreError
from .postgres_migrations import migrate
from .postgres_pool import CONNECT_TIMEOUT, Connection, describe, unavailable
from .sqlite_migrations import MIGRATIONS as SQLITE_MIGRATIONS

# Keys and users before what points at them; the rollups last.
TABLES = (
    "api_keys",
    "user_budgets",
    "admin_users",
    "audit_log",
    "request_logs",
    "usage_hourly",
    "usage_hourly_latency",
)
# Tables whose ids come from a sequence on PostgreSQL (BIGSERIAL).
_SERIAL = ("api_keys", "admin_users", "audit_log", "request_logs")
BATCH = 10_000


class TargetNotEmpty(StoreError):
    """The PostgreSQL database holds llmgw data already."""


class CountMismatch(StoreError):
    """The copy's row counts differ from the source's (nothing was committed)."""

    def __init__(self, report: CopyReport) -> None:
        self.report = report
        wrong = ", ".join(
            f"{t.table} ({t.source} vs {t.target})" for t in report.tables if not t.equal
        )
        super().__init__(f"row counts differ after the copy: {wrong}; nothing was committed")


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int
    target: int

    @property
    def equal(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: str
    target: str
    tables: tuple[TableCount, ...]


async def copy_sqlite_to_postgres(
    path: Path, url: str, *, batch: int = BATCH, clock: Callable[[], float] = time.time
) -> CopyReport:
    """Copy the llmgw database at `path` into the empty PostgreSQL database at `url`.

    Raises `StoreError` (saying what to do) for a source in use, missing or not at this
    llmgw's schema, `TargetNotEmpty`, `CountMismatch`, or `StoreUnavailable`."""
    source = await _open_source(path)
    try:
        target = describe(url)
        with unavailable(target):
            connection = await _connect(url, target)
            try:
                await migrate(connection, clock)
                async with connection.transaction():
                    report = CopyReport(str(path), target, await _copy(source, connection, batch))
                    if not all(t.equal for t in report.tables):
                        raise CountMismatch(report)
            finally:
                await connection.close()
    finally:
        await source.close()
    return report


async def _open_source(path: Path) -> aiosqlite.Connection:
    if not await asyncio.to_thread(path.is_file):
        raise StoreError(f"there is no SQLite database at {path}: give its path with --from")
    db = await aiosqlite.connect(path, isolation_level=None, timeout=0.5)
    try:
        await db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            await db.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:  # "database is locked"
            raise StoreError(
                f"{path} is in use ({exc}): stop the gateway (and anything else using "
                "it) first, the copy runs offline"
            ) from None
        try:
            async with db.execute("SELECT max(version) FROM schema_migrations") as cursor:
                row = await cursor.fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not an llmgw database ({exc})") from None
        newest = max(m.version for m in SQLITE_MIGRATIONS)
        if row is None or row[0] != newest:
            raise StoreError(
                f"{path} is at schema version {row and row[0]}, not {newest}: start this "
                "llmgw on it once (it brings the schema up to date), stop it, then copy"
            )
    except BaseException:
        await db.close()
        raise
    return db


async def _connect(url: str, name: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except asyncpg.PostgresError as exc:  # a wrong password, no such database
        raise StoreError(f"cannot open the {name}: {exc}") from None


async def _copy(
    source: aiosqlite.Connection, target: Connection, batch: int
) -> tuple[TableCount, ...]:
    # Nothing else writes meanwhile: a gateway started on the target waits.
    await target.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
    held = [t for t in TABLES if await target.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t})")]
    if held:
        raise TargetNotEmpty(
            f"the target holds llmgw data already (in {', '.join(held)}): copy into an "
            "empty database (createdb a new one), nothing was changed"
        )
    for table in TABLES:
        await _copy_table(source, target, table, batch)
    for table in _SERIAL:
        # The next id after the copied ones, as SQLite would give.
        await target.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" coalesce(max(id), 0) + 1, false) FROM {table}"
        )
    counts = []
    for table in TABLES:
        async with source.execute(f"SELECT count(*) FROM {table}") as cursor:
            row = await cursor.fetchone()
        copied = await target.fetchval(f"SELECT count(*) FROM {table}")
        counts.append(TableCount(table, int(row[0]) if row else 0, int(copied)))
    return tuple(counts)


async def _copy_table(
    source: aiosqlite.Connection, target: Connection, table: str, batch: int
) -> None:
    async with source.execute(f"PRAGMA table_info({table})") as cursor:
        columns = [row[1] async for row in cursor]
    types = {
        name: kind
        for name, kind in await target.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
    }
    if missing := [c for c in columns if c not in types]:
        raise StoreError(
            f"PostgreSQL's {table} has no column {', '.join(missing)}: this llmgw's two "
            "schemas differ (a bug: please report it)"
        )
    convert = [_CONVERT.get(types[c]) for c in columns]
    async with source.execute(f"SELECT {', '.join(columns)} FROM {table}") as cursor:
        while rows := await cursor.fetchmany(batch):
            records = [
                tuple(
                    v if f is None or v is None else f(v) for f, v in zip(convert, row, strict=True)
                )
                for row in rows
            ]
            await target.copy_records_to_table(table, records=records, columns=columns)


# SQLite's values as COPY's binary format wants them (0/1 for booleans, an integer
# stored in a REAL column).
_CONVERT: dict[str, Callable[[Any], Any]] = {"boolean": bool, "double precision": float}
