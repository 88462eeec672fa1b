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
from .sqlite_migrations import BOUNDS_NS_V3


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# pg_advisory_lock's key for "migrating llmgw's schema": any constant all replicas share.
MIGRATION_LOCK = 0x6C6C_6D67_7700  # "llmgw" and a zero

# A duration's latency bucket as the ledger's fold finds it (`postgres_ledger`): how many
# of migration 3's bounds are at or below it, compared as doubles, as SQLite compares.
_BUCKET_V3 = (
    f"width_bucket(duration_ms * 1000000, '{{{','.join(map(str, BOUNDS_NS_V3))}}}'::float8[])"
)
_SUMS = "requests, errors, rate_limited, prompt_tokens, completion_tokens, duration_ms_sum"

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
    Migration(
        4,
        "SQLite's migration 8: rollups by endpoint, usage_hourly and its latency cells"
        " rebuilt per route",
        # As SQLite's migration 8 (see there): new tables, filled from request_logs, and
        # what the old cells hold beyond the ledger's rows (pruned since) kept under
        # endpoint ''. New tables rather than ALTER TABLE: every cell is split anew, and
        # the columns keep SQLite's order (`llmgw db copy` matches them by name all the
        # same). One transaction; PostgreSQL's aggregates spill to disk, so memory stays
        # bounded without batches.
        f"""
        CREATE TABLE usage_hourly_new (
            hour TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            api_key_id BIGINT NOT NULL,
            model TEXT COLLATE "C" NOT NULL DEFAULT '',
            endpoint TEXT COLLATE "C" NOT NULL DEFAULT '',
            requests BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            rate_limited BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            duration_ms_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
            CONSTRAINT usage_hourly_by_endpoint_pkey
                PRIMARY KEY (hour, user_id, api_key_id, model, endpoint)
        );
        CREATE TABLE usage_hourly_latency_new (
            hour TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            api_key_id BIGINT NOT NULL,
            model TEXT COLLATE "C" NOT NULL DEFAULT '',
            endpoint TEXT COLLATE "C" NOT NULL DEFAULT '',
            bucket INTEGER NOT NULL,
            count BIGINT NOT NULL DEFAULT 0,
            CONSTRAINT usage_hourly_latency_by_endpoint_pkey
                PRIMARY KEY (hour, user_id, api_key_id, model, endpoint, bucket)
        );
        INSERT INTO usage_hourly_new (hour, user_id, api_key_id, model, endpoint, {_SUMS})
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''), endpoint, count(*),
            count(*) FILTER (WHERE status_code >= 400 AND status_code <> 429),
            count(*) FILTER (WHERE status_code = 429),
            sum(prompt_tokens), sum(completion_tokens),
            coalesce(sum(duration_ms) FILTER (WHERE status_code <> 429), 0)
        FROM request_logs GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO usage_hourly_new AS cell
            (hour, user_id, api_key_id, model, endpoint, {_SUMS})
        SELECT hour, user_id, api_key_id, model, '', sum(requests), sum(errors),
            sum(rate_limited), sum(prompt_tokens), sum(completion_tokens),
            sum(duration_ms_sum)
        FROM (
            SELECT hour, user_id, api_key_id, model, {_SUMS} FROM usage_hourly
            UNION ALL
            SELECT hour, user_id, api_key_id, model, -requests, -errors, -rate_limited,
                -prompt_tokens, -completion_tokens, -duration_ms_sum
            FROM usage_hourly_new
        ) AS both_sides GROUP BY 1, 2, 3, 4 HAVING sum(requests) > 0
        ON CONFLICT (hour, user_id, api_key_id, model, endpoint) DO UPDATE SET
            requests = cell.requests + excluded.requests,
            errors = cell.errors + excluded.errors,
            rate_limited = cell.rate_limited + excluded.rate_limited,
            prompt_tokens = cell.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = cell.completion_tokens + excluded.completion_tokens,
            duration_ms_sum = cell.duration_ms_sum + excluded.duration_ms_sum;
        INSERT INTO usage_hourly_latency_new
            (hour, user_id, api_key_id, model, endpoint, bucket, count)
        SELECT substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0),
            coalesce(model, ''), endpoint, {_BUCKET_V3}, count(*)
        FROM request_logs WHERE status_code <> 429 GROUP BY 1, 2, 3, 4, 5, 6;
        INSERT INTO usage_hourly_latency_new AS cell
            (hour, user_id, api_key_id, model, endpoint, bucket, count)
        SELECT hour, user_id, api_key_id, model, '', bucket, sum(count)
        FROM (
            SELECT hour, user_id, api_key_id, model, bucket, count FROM usage_hourly_latency
            UNION ALL
            SELECT hour, user_id, api_key_id, model, bucket, -count
            FROM usage_hourly_latency_new
        ) AS both_sides GROUP BY 1, 2, 3, 4, 6 HAVING sum(count) > 0
        ON CONFLICT (hour, user_id, api_key_id, model, endpoint, bucket) DO UPDATE SET
            count = cell.count + excluded.count;
        DROP TABLE usage_hourly;
        DROP TABLE usage_hourly_latency;
        ALTER TABLE usage_hourly_new RENAME TO usage_hourly;
        ALTER TABLE usage_hourly_latency_new RENAME TO usage_hourly_latency;
        ALTER TABLE usage_hourly
            RENAME CONSTRAINT usage_hourly_by_endpoint_pkey TO usage_hourly_pkey;
        ALTER TABLE usage_hourly_latency
            RENAME CONSTRAINT usage_hourly_latency_by_endpoint_pkey TO usage_hourly_latency_pkey;
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
