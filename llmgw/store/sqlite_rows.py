"""SQLite's SQL for the store: the ledger's insert and fold, how a key's changes are
stored, and the errors that are a record's fault (the column lists and the conversions
from rows are both databases', in `rows`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from ..ledger import UsageRecord
from ..rollups import BOUNDS_NS, OVERFLOW, Fold
from ..times import iso_utc

# What SQLite raises for a value it cannot store (an integer past 2^63, text that is not
# UTF-8) or a row a constraint refuses: the records' fault, not the database's, so the
# ledger sets such a record aside instead of retrying it for ever.
RECORD_ERRORS = (OverflowError, UnicodeEncodeError, sqlite3.IntegrityError, sqlite3.DataError)
LAST_LOG_ID = "SELECT coalesce(max(id), 0) FROM request_logs"
# ON CONFLICT, not OR IGNORE: that would also skip, silently, a row a CHECK refuses.
INSERT_LOG = (
    "INSERT INTO request_logs (request_id, user_id, api_key_id, endpoint, method,"
    " status_code, duration_ms, ttft_ms, prompt_tokens, completion_tokens, usage_source, model,"
    " upstream, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (request_id) DO NOTHING"
)
# The rows just inserted (ids above the batch's first: SQLite gives a new row the
# highest id plus one) folded into the rollups, with the definitions of
# `llmgw.rollups`, and into their keys' last use.
_NEW = "FROM request_logs WHERE id > ?1"
_CELL = "substr(timestamp, 1, 13), user_id, coalesce(api_key_id, 0), coalesce(model, ''), endpoint"
_BUCKET = (
    "CASE "
    + " ".join(f"WHEN duration_ms * 1000000 < {b} THEN {i}" for i, b in enumerate(BOUNDS_NS))
    + f" ELSE {OVERFLOW} END"
)
FOLD_NEW_LOGS = (
    "INSERT INTO usage_hourly (hour, user_id, api_key_id, model, endpoint, requests, errors,"
    " rate_limited, prompt_tokens, completion_tokens, duration_ms_sum)"
    f" SELECT {_CELL}, count(*), sum(status_code >= 400 AND status_code != 429),"
    " sum(status_code = 429), sum(prompt_tokens), sum(completion_tokens),"
    f" total(CASE WHEN status_code = 429 THEN 0 ELSE duration_ms END) {_NEW}"
    " GROUP BY 1, 2, 3, 4, 5"
    " ON CONFLICT (hour, user_id, api_key_id, model, endpoint) DO UPDATE SET"
    " requests = requests + excluded.requests, errors = errors + excluded.errors,"
    " rate_limited = rate_limited + excluded.rate_limited,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " duration_ms_sum = duration_ms_sum + excluded.duration_ms_sum",
    "INSERT INTO usage_hourly_latency (hour, user_id, api_key_id, model, endpoint, bucket,"
    f" count) SELECT {_CELL}, {_BUCKET}, count(*) {_NEW} AND status_code != 429"
    " GROUP BY 1, 2, 3, 4, 5, 6"
    " ON CONFLICT (hour, user_id, api_key_id, model, endpoint, bucket) DO UPDATE SET"
    " count = count + excluded.count",
    "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ''), used.last)"
    f" FROM (SELECT api_key_id, max(timestamp) AS last {_NEW} AND api_key_id IS NOT NULL"
    " GROUP BY api_key_id) AS used WHERE api_keys.id = used.api_key_id",
)


# A batch folded in Python (rollups.Fold), applied a cell at a time.
UPSERT_HOURLY = (
    "INSERT INTO usage_hourly (hour, user_id, api_key_id, model, endpoint, requests, errors,"
    " rate_limited, prompt_tokens, completion_tokens, duration_ms_sum)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (hour, user_id, api_key_id, model, endpoint) DO UPDATE SET"
    " requests = requests + excluded.requests, errors = errors + excluded.errors,"
    " rate_limited = rate_limited + excluded.rate_limited,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " duration_ms_sum = duration_ms_sum + excluded.duration_ms_sum"
)
UPSERT_LATENCY = (
    "INSERT INTO usage_hourly_latency (hour, user_id, api_key_id, model, endpoint, bucket,"
    " count) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (hour, user_id, api_key_id, model, endpoint, bucket) DO UPDATE SET"
    " count = count + excluded.count"
)
UPDATE_LAST_USED = (
    "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ''), ?) WHERE id = ?"
)


def folded_rows(records: Iterable[UsageRecord], fold: Fold) -> Iterator[tuple[Any, ...]]:
    """The rows of `records`, each added to `fold` as it is made: run as executemany's
    parameters, all of it happens in SQLite's thread."""
    for record in records:
        row = log_row(record)
        fold.add(row[13], row[1], row[2], row[11], row[3], row[5], row[6], row[8], row[9])
        yield row


def fold_upserts(fold: Fold) -> tuple[tuple[str, list[tuple[Any, ...]]], ...]:
    """The statements that add `fold` to the rollups and the keys' last use."""
    return (
        (UPSERT_HOURLY, [(*cell, *sums) for cell, sums in fold.totals.items()]),
        (UPSERT_LATENCY, [(*cell, count) for cell, count in fold.latency.items()]),
        (UPDATE_LAST_USED, [(last, key_id) for key_id, last in fold.last_used.items()]),
    )


def log_row(r: UsageRecord) -> tuple[Any, ...]:
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
