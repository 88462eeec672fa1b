"""PostgreSQL's schema as an ordered list of numbered migrations (its own: SQLite's
say the same in SQLite's words, and rebuild tables PostgreSQL can alter in place).

Each migration is applied once, in its own transaction, and recorded in
`schema_migrations`. Replicas starting together all try to migrate: a session advisory
lock lets one at a time in, and the others then find the work done. Never edit a
migration that has shipped: add the next one.

Timestamps are text in `llmgw.times`' format, as on SQLite, so that rollup hours,
windows and the values the store reads back are the same on both; `COLLATE "C"` makes
them compare byte by byte whatever the database's locale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..times import iso_utc
from .base import StoreError
from .postgres_pool import Connection


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# pg_advisory_lock's key for "migrating llmgw's schema": any constant all replicas share.
MIGRATION_LOCK = 0x6C6C_6D67_7700  # "llmgw" and a zero

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the schema of SQLite's migrations 1-5: keys, ledger, admin users, audit, rollups",
        # No foreign key from request_logs to api_keys: the history outlives a deleted
        # key. No NULL in the rollups' primary keys: a row without a key is key 0,
        # without a model ''.
        """
        CREATE TABLE api_keys (
            id BIGSERIAL PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            user_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            is_active BOOLEAN NOT NULL DEFAULT TRUE,
            created_at TEXT COLLATE "C" NOT NULL,
            updated_at TEXT COLLATE "C" NOT NULL,
            expires_at TEXT COLLATE "C",
            last_used_at TEXT COLLATE "C",
            allowed_models TEXT,
            requests_per_minute BIGINT,
            requests_per_hour BIGINT
        );
        CREATE INDEX idx_api_keys_user_id ON api_keys (user_id);

        CREATE TABLE request_logs (
            id BIGSERIAL PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            api_key_id BIGINT,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            status_code BIGINT NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            ttft_ms DOUBLE PRECISION,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            usage_source TEXT NOT NULL
                CHECK (usage_source IN ('reported', 'estimated', 'partial', 'invalid')),
            model TEXT,
            upstream TEXT,
            timestamp TEXT COLLATE "C" NOT NULL
        );
        CREATE INDEX idx_request_logs_timestamp ON request_logs (timestamp);
        CREATE INDEX idx_request_logs_key_timestamp ON request_logs (api_key_id, timestamp);

        CREATE TABLE admin_users (
            id BIGSERIAL PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            hashed_password TEXT NOT NULL,
            email TEXT,
            is_active BOOLEAN NOT NULL DEFAULT TRUE,
            created_at TEXT COLLATE "C" NOT NULL,
            last_login TEXT COLLATE "C",
            password_changed_at TEXT COLLATE "C",
            tokens_valid_after TEXT COLLATE "C"
        );

        CREATE TABLE audit_log (
            id BIGSERIAL PRIMARY KEY,
            timestamp TEXT COLLATE "C" NOT NULL,
            actor TEXT NOT NULL,
            door TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            before TEXT,
            after TEXT
        );
        CREATE INDEX idx_audit_log_timestamp ON audit_log (timestamp);

        CREATE TABLE usage_hourly (
            hour TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            api_key_id BIGINT NOT NULL,
            model TEXT COLLATE "C" NOT NULL DEFAULT '',
            requests BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            rate_limited BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            duration_ms_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model)
        );
        CREATE TABLE usage_hourly_latency (
            hour TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            api_key_id BIGINT NOT NULL,
            model TEXT COLLATE "C" NOT NULL DEFAULT '',
            bucket INTEGER NOT NULL,
            count BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, user_id, api_key_id, model, bucket)
        );
        """,
    ),
    Migration(
        2,
        "key_changes: a numbered log of key changes, which replicas read to follow",
        # One row per change of a key, in its transaction (which NOTIFYs llmgw_keys with
        # the version on commit). Versions are taken under an advisory lock held until
        # commit (`postgres_tx`), so they commit in order: a replica that has read
        # version N never later meets a smaller one committing.
        """
        CREATE TABLE key_changes (
            version BIGSERIAL PRIMARY KEY,
            key_id BIGINT NOT NULL,
            changed_at TEXT COLLATE "C" NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "SQLite's migration 7: per-key token, in-flight and budget limits; user budgets;"
        " rollups by key and user",
        # NULL: the key's tier's limit. A user's budget is read with the user's keys (a
        # LEFT JOIN), so that it reaches every replica through the key change log. The
        # two rollup indexes let a budget's spent tokens since a period's start be read
        # from the hours' cells of one key or user, not from a month of ledger rows.
        """
        ALTER TABLE api_keys
            ADD COLUMN tokens_per_minute BIGINT CHECK (tokens_per_minute >= 0),
            ADD COLUMN tokens_per_day BIGINT CHECK (tokens_per_day >= 0),
            ADD COLUMN max_in_flight BIGINT CHECK (max_in_flight >= 0),
            ADD COLUMN budget_tokens BIGINT CHECK (budget_tokens >= 0),
            ADD COLUMN budget_period TEXT CHECK (budget_period IN ('day', 'week', 'month'));
        CREATE TABLE user_budgets (
            user_id TEXT PRIMARY KEY,
            budget_tokens BIGINT NOT NULL CHECK (budget_tokens >= 0),
            budget_period TEXT NOT NULL CHECK (budget_period IN ('day', 'week', 'month')),
            updated_at TEXT COLLATE "C" NOT NULL
        );
        CREATE INDEX idx_usage_hourly_key_hour ON usage_hourly (api_key_id, hour);
        CREATE INDEX idx_usage_hourly_user_hour ON usage_hourly (user_id, hour);
        """,
    ),
)


async def migrate(connection: Connection, now: Callable[[], float]) -> list[Migration]:
    """Apply the migrations the database has not seen yet, one replica at a time;
    return those this call applied."""
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        return await _migrate(connection, now)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _migrate(connection: Connection, now: Callable[[], float]) -> list[Migration]:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in await connection.fetch("SELECT version FROM schema_migrations")}
    newest = max((m.version for m in MIGRATIONS), default=0)
    if applied and max(applied) > newest:
        raise StoreError(
            f"the database is at schema version {max(applied)}, newer than this llmgw "
            f"knows ({newest}): upgrade llmgw"
        )
    done = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                iso_utc(now()),
            )
        done.append(migration)
    return done
