"""The database schema as an ordered list of numbered migrations.

Each migration is applied once, in its own transaction, and recorded in
`schema_migrations`; a database opened by a newer gateway is brought up to date at
start. Never edit a migration that has shipped: add the next one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from ..times import iso_utc
from .base import StoreError

log = logging.getLogger("llmgw.store")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# The latency buckets' upper bounds (ns) as migration 3 wrote them out, for the
# migrations that rebuild usage_hourly_latency from request_logs: frozen here, so that
# a later change of `llmgw.rollups.BOUNDS_NS` (which needs a migration of its own) cannot
# alter a shipped migration. PostgreSQL's migrations use them too.
BOUNDS_NS_V3: tuple[int, ...] = (
    1000000, 1250000, 1562500, 1953125, 2441406, 3051758, 3814697, 4768372, 5960464,
    7450581, 9313226, 11641532, 14551915, 18189894, 22737368, 28421709, 35527137, 44408921,
    55511151, 69388939, 86736174, 108420217, 135525272, 169406589, 211758237, 264697796,
    330872245, 413590306, 516987883, 646234854, 807793567, 1009741959, 1262177448,
    1577721810, 1972152263, 2465190329, 3081487911, 3851859889, 4814824861, 6018531076,
    7523163845, 9403954807, 11754943508, 14693679385, 18367099232, 22958874039,
    28698592549, 35873240687, 44841550858, 56051938573, 70064923216, 87581154020,
    109476442525, 136845553157, 171056941446, 213821176807, 267276471009, 334095588762,
    417619485952, 522024357440, 652530446800,
)  # fmt: skip
_BUCKET_V3 = (
    "CASE "
    + " ".join(f"WHEN duration_ms * 1000000 < {b} THEN {i}" for i, b in enumerate(BOUNDS_NS_V3))
    + f" ELSE {len(BOUNDS_NS_V3)} END"
)
_SUMS = "requests, errors, rate_limited, prompt_tokens, completion_tokens, duration_ms_sum"

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
        # address, and the hour leads it, so a window is one range scan. The backfill
        # puts every row in the cells and latency buckets of `llmgw.rollups` as they
        # were when it shipped (bucket i ends at round(1e6 * 1.25**i) ns), written out
        # here so that no later change of that module can alter this migration.
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
        INSERT INTO usage_hourly (hour, user_id, api_key_id, model, requests, errors,
            rate_limited, prompt_tokens, completion_tokens, duration_ms_sum)
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''), count(*), sum(status_code >= 400 AND status_code != 429),
            sum(status_code = 429), sum(prompt_tokens), sum(completion_tokens),
            total(CASE WHEN status_code = 429 THEN 0 ELSE duration_ms END)
        FROM request_logs GROUP BY 1, 2, 3, 4;
        INSERT INTO usage_hourly_latency (hour, user_id, api_key_id, model, bucket, count)
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''),
            CASE
                WHEN duration_ms * 1000000 < 1000000 THEN 0
                WHEN duration_ms * 1000000 < 1250000 THEN 1
                WHEN duration_ms * 1000000 < 1562500 THEN 2
                WHEN duration_ms * 1000000 < 1953125 THEN 3
                WHEN duration_ms * 1000000 < 2441406 THEN 4
                WHEN duration_ms * 1000000 < 3051758 THEN 5
                WHEN duration_ms * 1000000 < 3814697 THEN 6
                WHEN duration_ms * 1000000 < 4768372 THEN 7
                WHEN duration_ms * 1000000 < 5960464 THEN 8
                WHEN duration_ms * 1000000 < 7450581 THEN 9
                WHEN duration_ms * 1000000 < 9313226 THEN 10
                WHEN duration_ms * 1000000 < 11641532 THEN 11
                WHEN duration_ms * 1000000 < 14551915 THEN 12
                WHEN duration_ms * 1000000 < 18189894 THEN 13
                WHEN duration_ms * 1000000 < 22737368 THEN 14
                WHEN duration_ms * 1000000 < 28421709 THEN 15
                WHEN duration_ms * 1000000 < 35527137 THEN 16
                WHEN duration_ms * 1000000 < 44408921 THEN 17
                WHEN duration_ms * 1000000 < 55511151 THEN 18
                WHEN duration_ms * 1000000 < 69388939 THEN 19
                WHEN duration_ms * 1000000 < 86736174 THEN 20
                WHEN duration_ms * 1000000 < 108420217 THEN 21
                WHEN duration_ms * 1000000 < 135525272 THEN 22
                WHEN duration_ms * 1000000 < 169406589 THEN 23
                WHEN duration_ms * 1000000 < 211758237 THEN 24
                WHEN duration_ms * 1000000 < 264697796 THEN 25
                WHEN duration_ms * 1000000 < 330872245 THEN 26
                WHEN duration_ms * 1000000 < 413590306 THEN 27
                WHEN duration_ms * 1000000 < 516987883 THEN 28
                WHEN duration_ms * 1000000 < 646234854 THEN 29
                WHEN duration_ms * 1000000 < 807793567 THEN 30
                WHEN duration_ms * 1000000 < 1009741959 THEN 31
                WHEN duration_ms * 1000000 < 1262177448 THEN 32
                WHEN duration_ms * 1000000 < 1577721810 THEN 33
                WHEN duration_ms * 1000000 < 1972152263 THEN 34
                WHEN duration_ms * 1000000 < 2465190329 THEN 35
                WHEN duration_ms * 1000000 < 3081487911 THEN 36
                WHEN duration_ms * 1000000 < 3851859889 THEN 37
                WHEN duration_ms * 1000000 < 4814824861 THEN 38
                WHEN duration_ms * 1000000 < 6018531076 THEN 39
                WHEN duration_ms * 1000000 < 7523163845 THEN 40
                WHEN duration_ms * 1000000 < 9403954807 THEN 41
                WHEN duration_ms * 1000000 < 11754943508 THEN 42
                WHEN duration_ms * 1000000 < 14693679385 THEN 43
                WHEN duration_ms * 1000000 < 18367099232 THEN 44
                WHEN duration_ms * 1000000 < 22958874039 THEN 45
                WHEN duration_ms * 1000000 < 28698592549 THEN 46
                WHEN duration_ms * 1000000 < 35873240687 THEN 47
                WHEN duration_ms * 1000000 < 44841550858 THEN 48
                WHEN duration_ms * 1000000 < 56051938573 THEN 49
                WHEN duration_ms * 1000000 < 70064923216 THEN 50
                WHEN duration_ms * 1000000 < 87581154020 THEN 51
                WHEN duration_ms * 1000000 < 109476442525 THEN 52
                WHEN duration_ms * 1000000 < 136845553157 THEN 53
                WHEN duration_ms * 1000000 < 171056941446 THEN 54
                WHEN duration_ms * 1000000 < 213821176807 THEN 55
                WHEN duration_ms * 1000000 < 267276471009 THEN 56
                WHEN duration_ms * 1000000 < 334095588762 THEN 57
                WHEN duration_ms * 1000000 < 417619485952 THEN 58
                WHEN duration_ms * 1000000 < 522024357440 THEN 59
                WHEN duration_ms * 1000000 < 652530446800 THEN 60
                ELSE 61
            END,
            count(*)
        FROM request_logs WHERE status_code != 429 GROUP BY 1, 2, 3, 4, 5;
        """,
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
    Migration(
        5,
        "usage_source 'invalid'; one ledger row per request id",
        # SQLite cannot change a CHECK constraint in place: the table is rebuilt (the
        # steps of SQLite's "ALTER TABLE" page), keeping every row and its id. A unique
        # request id makes a batch written twice (its commit acknowledgement lost)
        # harmless: the rows already there are ignored, and only new ones are counted.
        """
        CREATE TABLE request_logs_new (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
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
                CHECK (usage_source IN ('reported', 'estimated', 'partial', 'invalid')),
            model TEXT,
            upstream TEXT,
            timestamp TEXT NOT NULL
        );
        INSERT OR IGNORE INTO request_logs_new SELECT * FROM request_logs ORDER BY id;
        DROP TABLE request_logs;
        ALTER TABLE request_logs_new RENAME TO request_logs;
        CREATE INDEX idx_request_logs_timestamp ON request_logs (timestamp);
        CREATE INDEX idx_request_logs_key_timestamp ON request_logs (api_key_id, timestamp);
        """,
    ),
    Migration(
        6,
        "key_changes: a numbered log of key changes, which replicas read to follow",
        # One row per change of a key, in its transaction; a replica reads the rows after
        # the version it has applied and takes each key's row as it is now. AUTOINCREMENT:
        # a version is never reused, even after the newest rows are deleted.
        """
        CREATE TABLE key_changes (
            version INTEGER PRIMARY KEY AUTOINCREMENT,
            key_id INTEGER NOT NULL,
            changed_at TEXT NOT NULL
        );
        """,
    ),
    Migration(
        7,
        "per-key token, in-flight and budget limits; user budgets; rollups by key and user",
        # NULL: the key's tier's limit. A user's budget is read with the user's keys (a
        # LEFT JOIN), so that it reaches every replica through the key change log. The
        # two rollup indexes let a budget's spent tokens since a period's start be read
        # from the hours' cells of one key or user, not from a month of ledger rows.
        """
        ALTER TABLE api_keys ADD COLUMN tokens_per_minute INTEGER
            CHECK (tokens_per_minute >= 0);
        ALTER TABLE api_keys ADD COLUMN tokens_per_day INTEGER CHECK (tokens_per_day >= 0);
        ALTER TABLE api_keys ADD COLUMN max_in_flight INTEGER CHECK (max_in_flight >= 0);
        ALTER TABLE api_keys ADD COLUMN budget_tokens INTEGER CHECK (budget_tokens >= 0);
        ALTER TABLE api_keys ADD COLUMN budget_period TEXT
            CHECK (budget_period IN ('day', 'week', 'month'));
        CREATE TABLE user_budgets (
            user_id TEXT PRIMARY KEY,
            budget_tokens INTEGER NOT NULL CHECK (budget_tokens >= 0),
            budget_period TEXT NOT NULL CHECK (budget_period IN ('day', 'week', 'month')),
            updated_at TEXT NOT NULL
        );
        CREATE INDEX idx_usage_hourly_key_hour ON usage_hourly (api_key_id, hour);
        CREATE INDEX idx_usage_hourly_user_hour ON usage_hourly (user_id, hour);
        """,
    ),
    Migration(
        8,
        "rollups by endpoint: usage_hourly and its latency cells rebuilt per route",
        # The cells gain the endpoint (the route of request_logs.endpoint) and are rebuilt
        # from request_logs. The ledger may have been pruned (`prune_request_logs`) while
        # the rollups kept those hours: what an old cell holds beyond the rows still in
        # the ledger is kept, under endpoint '' (not known any more), so that every other
        # grouping's figures stay exactly what they were. One transaction, as migrations 3
        # and 5: each INSERT ... SELECT streams through SQLite's sorter (spilling to
        # disk), so memory stays bounded without batches, and a failure leaves the old
        # tables whole. The budget indexes of migration 7 go with the old table and are
        # made again.
        f"""
        CREATE TABLE usage_hourly_new (
            hour TEXT NOT NULL,
            user_id TEXT NOT NULL,
            api_key_id INTEGER NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            endpoint TEXT NOT NULL DEFAULT '',
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            rate_limited INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            duration_ms_sum REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model, endpoint)
        ) WITHOUT ROWID;
        CREATE TABLE usage_hourly_latency_new (
            hour TEXT NOT NULL,
            user_id TEXT NOT NULL,
            api_key_id INTEGER NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            endpoint TEXT NOT NULL DEFAULT '',
            bucket INTEGER NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model, endpoint, bucket)
        ) WITHOUT ROWID;
        INSERT INTO usage_hourly_new (hour, user_id, api_key_id, model, endpoint, {_SUMS})
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''), endpoint, count(*),
            sum(status_code >= 400 AND status_code != 429), sum(status_code = 429),
            sum(prompt_tokens), sum(completion_tokens),
            total(CASE WHEN status_code = 429 THEN 0 ELSE duration_ms END)
        FROM request_logs GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO usage_hourly_new (hour, user_id, api_key_id, model, endpoint, {_SUMS})
        SELECT hour, user_id, api_key_id, model, '', sum(requests), sum(errors),
            sum(rate_limited), sum(prompt_tokens), sum(completion_tokens),
            total(duration_ms_sum)
        FROM (
            SELECT hour, user_id, api_key_id, model, {_SUMS} FROM usage_hourly
            UNION ALL
            SELECT hour, user_id, api_key_id, model, -requests, -errors, -rate_limited,
                -prompt_tokens, -completion_tokens, -duration_ms_sum
            FROM usage_hourly_new
        ) GROUP BY 1, 2, 3, 4 HAVING sum(requests) > 0
        ON CONFLICT (hour, user_id, api_key_id, model, endpoint) DO UPDATE SET
            requests = requests + excluded.requests, errors = errors + excluded.errors,
            rate_limited = rate_limited + excluded.rate_limited,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens,
            duration_ms_sum = duration_ms_sum + excluded.duration_ms_sum;
        INSERT INTO usage_hourly_latency_new
            (hour, user_id, api_key_id, model, endpoint, bucket, count)
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''), endpoint, {_BUCKET_V3}, count(*)
        FROM request_logs WHERE status_code != 429 GROUP BY 1, 2, 3, 4, 5, 6;
        INSERT INTO usage_hourly_latency_new
            (hour, user_id, api_key_id, model, endpoint, bucket, count)
        SELECT hour, user_id, api_key_id, model, '', bucket, sum(count)
        FROM (
            SELECT hour, user_id, api_key_id, model, bucket, count FROM usage_hourly_latency
            UNION ALL
            SELECT hour, user_id, api_key_id, model, bucket, -count
            FROM usage_hourly_latency_new
        ) GROUP BY 1, 2, 3, 4, 6 HAVING sum(count) > 0
        ON CONFLICT (hour, user_id, api_key_id, model, endpoint, bucket) DO UPDATE SET
            count = count + excluded.count;
        DROP TABLE usage_hourly;
        DROP TABLE usage_hourly_latency;
        ALTER TABLE usage_hourly_new RENAME TO usage_hourly;
        ALTER TABLE usage_hourly_latency_new RENAME TO usage_hourly_latency;
        CREATE INDEX idx_usage_hourly_key_hour ON usage_hourly (api_key_id, hour);
        CREATE INDEX idx_usage_hourly_user_hour ON usage_hourly (user_id, hour);
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
        raise StoreError(
            f"the database is at schema version {max(applied)}, newer than this llmgw "
            f"knows ({newest}): upgrade llmgw"
        )
    done = []
    for migration in MIGRATIONS:
        if migration.version not in applied:
            await _apply(db, migration, now())
            done.append(migration)
            log.info(
                "database schema: applied migration %d (%s)", migration.version, migration.name
            )
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
