"""The database schema as an ordered list of numbered migrations.

Each migration is applied once, in its own transaction, and recorded in
`schema_migrations`; a database opened by a newer gateway is brought up to date at
start. Never edit a migration that has shipped: add the next one.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from . import rollups
from .times import iso_utc


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "seed tables: api_keys, request_logs, admin_users, audit_log",
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            user_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            is_active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT,
            last_used_at TEXT,
            allowed_models TEXT
        );
        CREATE INDEX idx_api_keys_user_id ON api_keys (user_id);

        -- No foreign key to api_keys: the history outlives a deleted key.
        CREATE TABLE request_logs (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            api_key_id INTEGER,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            duration_ms REAL NOT NULL,
            ttft_ms REAL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            usage_source TEXT NOT NULL
                CHECK (usage_source IN ('reported', 'estimated', 'partial')),
            model TEXT,
            upstream TEXT,
            timestamp TEXT NOT NULL
        );
        CREATE INDEX idx_request_logs_timestamp ON request_logs (timestamp);
        CREATE INDEX idx_request_logs_key_timestamp ON request_logs (api_key_id, timestamp);

        CREATE TABLE admin_users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT NOT NULL UNIQUE,
            hashed_password TEXT NOT NULL,
            email TEXT,
            is_active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            last_login TEXT
        );

        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            timestamp TEXT NOT NULL,
            actor TEXT NOT NULL,
            door TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            before TEXT,
            after TEXT
        );
        CREATE INDEX idx_audit_log_timestamp ON audit_log (timestamp);
        """,
    ),
    Migration(
        2,
        "per-key request limits; admin password change time",
        """
        ALTER TABLE api_keys ADD COLUMN requests_per_minute INTEGER;
        ALTER TABLE api_keys ADD COLUMN requests_per_hour INTEGER;
        ALTER TABLE admin_users ADD COLUMN password_changed_at TEXT;
        """,
    ),
    Migration(
        3,
        "hourly usage rollups, backfilled from request_logs",
        # No NULL in a primary key (SQLite would let duplicates in): a row without a
        # key is key 0, without a model ''. WITHOUT ROWID: the key is the whole row's
        # address, and the hour leads it, so a window is one range scan.
        """
        CREATE TABLE usage_hourly (
            hour TEXT NOT NULL,
            user_id TEXT NOT NULL,
            api_key_id INTEGER NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            rate_limited INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            duration_ms_sum REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model)
        ) WITHOUT ROWID;
        CREATE TABLE usage_hourly_latency (
            hour TEXT NOT NULL,
            user_id TEXT NOT NULL,
            api_key_id INTEGER NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            bucket INTEGER NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model, bucket)
        ) WITHOUT ROWID;
        """
        + rollups.backfill_sql(),
    ),
    Migration(
        4,
        "admin tokens refused when issued before the user was disabled or changed password",
        # password_changed_at alone let a disabled user's old tokens work again once the
        # user was enabled again.
        """
        ALTER TABLE admin_users ADD COLUMN tokens_valid_after TEXT;
        UPDATE admin_users SET tokens_valid_after = password_changed_at;
        """,
    ),
)


def foreign_database(path: Path) -> str | None:
    """Why the file at `path` cannot be opened as an llmgw database (with its schema
    brought up to date), or None if it can.

    Read as immutable: no lock is taken, and a -wal beside it is neither read nor
    changed (it may be another database's, which the caller removes first)."""
    uri = f"{path.absolute().as_uri()}?immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            applied = db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    except sqlite3.Error as exc:
        return str(exc)
    newest = max(m.version for m in MIGRATIONS)
    if applied is not None and applied > newest:
        return f"schema version {applied}, newer than this llmgw knows ({newest})"
    return None


async def migrate(db: aiosqlite.Connection, now: Callable[[], float]) -> list[Migration]:
    """Apply the migrations `db` has not seen yet; return those applied."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    async with db.execute("SELECT version FROM schema_migrations") as cursor:
        applied = {row[0] async for row in cursor}
    newest = max((m.version for m in MIGRATIONS), default=0)
    if applied and max(applied) > newest:
        raise RuntimeError(
            f"the database is at schema version {max(applied)}, newer than this llmgw "
            f"knows ({newest}): upgrade llmgw"
        )
    done = []
    for migration in MIGRATIONS:
        if migration.version not in applied:
            await _apply(db, migration, now())
            done.append(migration)
    return done


async def _apply(db: aiosqlite.Connection, migration: Migration, now: float) -> None:
    # The connection is in autocommit mode, so the script's BEGIN makes the schema
    # change and its record one transaction.
    try:
        await db.executescript("BEGIN IMMEDIATE;\n" + migration.sql)
        await db.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, iso_utc(now)),
        )
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise
