"""The ledger on PostgreSQL: a batch of usage records in one statement.

The batch travels as 14 arrays, one per column (`unnest` turns them back into rows on
the server), so that asyncpg encodes it in C and PostgreSQL plans one statement, not a
thousand. The statement inserts the rows not written before (`ON CONFLICT (request_id)
DO NOTHING`: a batch retried after its commit's acknowledgement was lost adds nothing
twice), and folds only the rows it inserted (`RETURNING`) into the rollups, with the
definitions of `llmgw.rollups` (as SQLite's fold), and into their keys' last use.

Replicas write at once, and each statement locks rows in three tables. Every lock is
taken in a fixed order, so two writers never wait on each other in a circle: the ledger
rows by request id, the rollup cells by their primary key, the keys by id (`FOR UPDATE`
in id order before the update); and the tables one after the other, in the same order
for every writer, since every writer runs this one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..ledger import UsageRecord
from ..rollups import BOUNDS_NS
from ..times import iso_utc

_COLUMNS = (
    ("request_id", "text"),
    ("user_id", "text"),
    ("api_key_id", "bigint"),
    ("endpoint", "text"),
    ("method", "text"),
    ("status_code", "bigint"),
    ("duration_ms", "float8"),
    ("ttft_ms", "float8"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("usage_source", "text"),
    ("model", "text"),
    ("upstream", "text"),
    ("timestamp", "text"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)
_ARRAYS = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_COLUMNS, 1))
# How many bounds are at or below the duration (rollups.bucket_of's bisect_right, by
# binary search; the overflow bucket past the last), compared as doubles, as SQLite
# compares them.
_BUCKET = f"width_bucket(duration_ms * 1000000, '{{{','.join(map(str, BOUNDS_NS))}}}'::float8[])"
_CELL = "hour, user_id, api_key_id, model, endpoint"

INSERT_AND_FOLD = f"""
WITH inserted AS (
    INSERT INTO request_logs ({_NAMES})
    SELECT * FROM unnest({_ARRAYS}) AS batch ({_NAMES})
    ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING user_id, api_key_id, status_code, duration_ms, prompt_tokens,
        completion_tokens, model, endpoint, timestamp
), cells AS (
    SELECT substr(timestamp, 1, 13) AS hour, user_id, coalesce(api_key_id, 0) AS api_key_id,
        coalesce(model, '') AS model, endpoint, status_code, duration_ms, prompt_tokens,
        completion_tokens
    FROM inserted
), hourly AS (
    INSERT INTO usage_hourly AS cell ({_CELL}, requests, errors, rate_limited,
        prompt_tokens, completion_tokens, duration_ms_sum)
    SELECT {_CELL}, count(*),
        count(*) FILTER (WHERE status_code >= 400 AND status_code <> 429),
        count(*) FILTER (WHERE status_code = 429),
        sum(prompt_tokens), sum(completion_tokens),
        coalesce(sum(duration_ms) FILTER (WHERE status_code <> 429), 0)
    FROM cells GROUP BY {_CELL} ORDER BY {_CELL}
    ON CONFLICT ({_CELL}) DO UPDATE SET
        requests = cell.requests + excluded.requests,
        errors = cell.errors + excluded.errors,
        rate_limited = cell.rate_limited + excluded.rate_limited,
        prompt_tokens = cell.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = cell.completion_tokens + excluded.completion_tokens,
        duration_ms_sum = cell.duration_ms_sum + excluded.duration_ms_sum
), latency AS (
    INSERT INTO usage_hourly_latency AS cell ({_CELL}, bucket, count)
    SELECT {_CELL}, {_BUCKET} AS bucket, count(*)
    FROM cells WHERE status_code <> 429
    GROUP BY {_CELL}, bucket ORDER BY {_CELL}, bucket
    ON CONFLICT ({_CELL}, bucket) DO UPDATE SET count = cell.count + excluded.count
), used AS (
    SELECT api_key_id, max(timestamp) AS last FROM inserted
    WHERE api_key_id IS NOT NULL GROUP BY api_key_id
), locked AS (
    SELECT api_keys.id, used.last FROM api_keys JOIN used ON api_keys.id = used.api_key_id
    ORDER BY api_keys.id FOR UPDATE OF api_keys
), touched AS (
    UPDATE api_keys SET last_used_at = greatest(api_keys.last_used_at, locked.last)
    FROM locked WHERE api_keys.id = locked.id
)
SELECT count(*) FROM inserted
"""


def log_columns(records: Sequence[UsageRecord]) -> list[list[Any]]:
    """The batch as one list per column of request_logs (in `_COLUMNS`' order), the
    values as SQLite's store writes them (durations to the microsecond)."""
    return [
        [r.request_id for r in records],
        [r.user_id for r in records],
        [r.api_key_id for r in records],
        [r.endpoint for r in records],
        [r.method for r in records],
        [r.status_code for r in records],
        [round(r.duration_ms, 3) for r in records],
        [None if r.ttft_ms is None else round(r.ttft_ms, 3) for r in records],
        [r.prompt_tokens for r in records],
        [r.completion_tokens for r in records],
        [r.usage_source for r in records],
        [r.model for r in records],
        [r.upstream for r in records],
        [iso_utc(r.timestamp) for r in records],
    ]
