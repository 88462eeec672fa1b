"""The database a test runs on, SQLite or PostgreSQL, seen the same way: its settings,
a store opened on it, and its rows read straight from the database (not through the
store under test).

Queries are written once, with SQLite's `?` placeholders; PostgreSQL gets them as
`$1, $2, ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from llmgw.config import Settings
from llmgw.store import PostgresStore, SqliteStore, Store


class Database(Protocol):
    kind: str

    def configure(self, settings: Settings) -> Settings:
        """`settings` pointed at this database."""

    async def open_store(self, clock: Callable[[], float] = time.time) -> Store: ...

    async def rows(self, query: str, *params: Any) -> list[dict[str, Any]]: ...

    async def execute(self, query: str, *params: Any) -> None: ...

    async def columns(self, table: str) -> list[str]:
        """The table's columns, in order."""

    async def primary_key(self, table: str) -> list[str]:
        """The columns of the table's primary key, in order."""


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def configure(self, settings: Settings) -> Settings:
        database = dataclasses.replace(settings.database, path=str(self.path), url="")
        return dataclasses.replace(settings, database=database)

    async def open_store(self, clock: Callable[[], float] = time.time) -> Store:
        return await SqliteStore.open(self.path, clock)

    async def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        return read_rows(self.path, query, params)

    async def execute(self, query: str, *params: Any) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            db.execute(query, params)

    async def columns(self, table: str) -> list[str]:
        return [r["name"] for r in read_rows(self.path, f"PRAGMA table_info({table})")]

    async def primary_key(self, table: str) -> list[str]:
        info = read_rows(self.path, f"PRAGMA table_info({table})")
        return [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]]


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    def configure(self, settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, database=dataclasses.replace(settings.database, url=self.url)
        )

    async def open_store(self, clock: Callable[[], float] = time.time) -> Store:
        return await PostgresStore.open(self.url, clock)

    async def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        connection = await asyncpg.connect(self.url)
        try:
            return [dict(row) for row in await connection.fetch(_numbered(query), *params)]
        finally:
            await connection.close()

    async def execute(self, query: str, *params: Any) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(_numbered(query), *params)
        finally:
            await connection.close()

    async def columns(self, table: str) -> list[str]:
        rows = await self.rows(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
            table,
        )
        return [r["column_name"] for r in rows]

    async def primary_key(self, table: str) -> list[str]:
        rows = await self.rows(
            "SELECT a.attname FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON TRUE"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = ?::regclass AND i.indisprimary ORDER BY k.n",
            table,
        )
        return [r["attname"] for r in rows]


def database_of(settings: Settings) -> Database:
    """The database a gateway with `settings` uses."""
    if url := settings.postgres_url:
        return PostgresDatabase(url)
    return SqliteDatabase(settings.database_path)


def read_rows(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    # closing(): a connection's own `with` commits but leaves it open until collected,
    # and the failure suite counts this process's open files.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(query, params)]


def _numbered(query: str) -> str:
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", query)
