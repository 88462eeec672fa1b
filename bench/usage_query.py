"""How fast `GET /usage` answers on a big ledger, and what the rollups cost the writer.

Fills a temporary database (the real schema: `SqliteStore.open` runs the migrations) with
1,000,000 request_logs rows over 30 days, fed through `SqliteStore.insert_request_logs` in
batches of 1000, so the rollups are built exactly as in production. Then times the
7-day summary through `SqliteStore.usage_summary` (what the handler calls) against the
same figures computed from request_logs with plain SQL, checks that both agree, and
times migration 3's backfill of the same rows.

    .venv/bin/python bench/usage_query.py [--rows N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from llmgw import rollups
from llmgw.api_types import UsageReport
from llmgw.ledger import UsageRecord
from llmgw.store import SqliteStore
from llmgw.store.sqlite_migrations import MIGRATIONS
from llmgw.times import iso_utc

DAYS = 30
USERS = 200
KEYS = 400
MODELS = {"llama-3.1-70b": 0.6, "qwen2.5-coder-32b": 0.3, "llama-3.1-8b": 0.1}
# status: share of requests. 429 from throttled scripts, 499 from closed IDE tabs.
STATUSES = {200: 0.955, 429: 0.02, 499: 0.01, 400: 0.005, 404: 0.003, 502: 0.007}


def keys_of_users(rng: random.Random) -> list[tuple[str, float]]:
    """(user, weight) per key: users' traffic is Zipf-like, split over 1 to 3 keys."""
    owners = [f"user{u:03d}" for u in range(USERS)]
    owners += [rng.choice(owners) for _ in range(KEYS - USERS)]
    weight = {user: 1 / (rank + 1) ** 0.8 for rank, user in enumerate(owners[:USERS])}
    return [(user, weight[user] * rng.uniform(0.2, 1.0)) for user in owners]


def hour_weight(epoch: float) -> float:
    """Office hours are busy, nights and weekends quiet."""
    t = time.gmtime(epoch)
    weekday = 1.0 if t.tm_wday < 5 else 0.15
    return weekday * (1.0 if 7 <= t.tm_hour < 19 else 0.1)


def records(
    rows: int, now: float, keys: list[tuple[str, float]], rng: random.Random
) -> Iterator[UsageRecord]:
    """`rows` records in time order over the DAYS before `now`."""
    key_weights = [w for _, w in keys]
    models, model_weights = list(MODELS), list(MODELS.values())
    statuses, status_weights = list(STATUSES), list(STATUSES.values())
    start = (now // 3600) * 3600 - DAYS * 86400
    hours = [start + 3600 * h for h in range(DAYS * 24 + 1)]
    weights = [hour_weight(h) for h in hours]
    scale = rows / sum(weights)
    made = 0
    for i, hour in enumerate(hours):
        count = rows - made if i == len(hours) - 1 else round(weights[i] * scale)
        count = min(count, rows - made)
        made += count
        span = min(3600.0, now - hour)
        for ts in sorted(hour + rng.random() * span for _ in range(count)):
            key = rng.choices(range(KEYS), key_weights)[0]
            status = rng.choices(statuses, status_weights)[0]
            prompt = int(rng.lognormvariate(math.log(600), 1.0))
            completion = int(rng.lognormvariate(math.log(150), 1.0))
            if status == 200:
                duration = rng.lognormvariate(math.log(900), 0.9)
            elif status == 429:
                duration, prompt, completion = rng.uniform(0.05, 0.4), 0, 0
            elif status == 499:
                duration, completion = rng.uniform(500, 60_000), completion // 3
            else:
                duration, completion = rng.uniform(1, 30), 0
            yield UsageRecord(
                request_id=f"req-{made}-{ts}",
                user_id=keys[key][0],
                api_key_id=key + 1,
                endpoint="/v1/chat/completions",
                method="POST",
                status_code=status,
                duration_ms=duration,
                ttft_ms=None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                usage_source="reported",
                model=rng.choices(models, model_weights)[0],
                upstream="http://vllm-1:8100",
                timestamp=ts,
            )


async def fill(
    store: SqliteStore, rows: int, now: float, rate: float | None = None
) -> tuple[float, float]:
    """Insert the rows in batches of 1000; returns (seconds inserting, seconds total).
    With `rate`, the rows come `rate` a second, the last ones now, as the gateway's
    writer would see them at that load: a batch then spans 1000/rate seconds, not
    the 43 minutes of a month squeezed into 1000 batches."""
    rng = random.Random(20261127)
    keys = keys_of_users(rng)
    for k, (user, _) in enumerate(keys):
        async with store.transaction() as tx:
            await tx.insert_key(
                key_hash=f"hash{k}", key_prefix=f"sk-internal-{k:04d}", user_id=user,
                tier="standard", description="",
            )  # fmt: skip
    inserting, began, batch = 0.0, time.perf_counter(), []
    for i, record in enumerate(records(rows, now, keys, rng)):
        if rate:
            record.timestamp = now - (rows - i) / rate
        batch.append(record)
        if len(batch) == 1000:
            t0 = time.perf_counter()
            await store.insert_request_logs(batch)
            inserting += time.perf_counter() - t0
            batch = []
    if batch:
        t0 = time.perf_counter()
        await store.insert_request_logs(batch)
        inserting += time.perf_counter() - t0
    return inserting, time.perf_counter() - began


def raw_by_user(path: Path, since: float) -> dict[str, dict[str, Any]]:
    """The 7-day by-user figures straight from request_logs, exact percentiles."""
    cutoff = iso_utc(since)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        out = {
            user: {"requests": n, "errors": e, "rate_limited": r, "prompt_tokens": p,
                   "completion_tokens": c}
            for user, n, e, r, p, c in db.execute(
                "SELECT user_id, count(*), sum(status_code >= 400 AND status_code != 429),"
                " sum(status_code = 429), sum(prompt_tokens), sum(completion_tokens)"
                " FROM request_logs WHERE timestamp >= ? GROUP BY user_id",
                (cutoff,),
            )
        }  # fmt: skip
        durations: dict[str, list[float]] = {}
        for user, duration in db.execute(
            "SELECT user_id, duration_ms FROM request_logs"
            " WHERE timestamp >= ? AND status_code != 429",
            (cutoff,),
        ):
            durations.setdefault(user, []).append(duration)
    for user, values in durations.items():
        values.sort()
        for name, q in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
            out[user][name] = values[max(0, math.ceil(q * len(values)) - 1)]  # nearest rank
    return out


def agree(summary: UsageReport, raw: dict[str, dict[str, Any]]) -> bool:
    """Counts equal; percentiles within the histogram's 25 %."""
    rolled: dict[Any, Any] = {g["group"]: g for g in summary["data"]}
    if rolled.keys() != raw.keys():
        return False
    for user, exact in raw.items():
        for name, value in exact.items():
            got = rolled[user][name]
            if name.startswith("latency"):
                if abs(got - value) > 0.25 * value + 1e-3:
                    return False
            elif got != value:
                return False
    return True


async def timed(action: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    """(median, min) milliseconds over `runs` calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await action()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def backfill(path: Path) -> tuple[float, bool]:
    """Rebuild the rollups with migration 3's SQL: (seconds, same as built live)."""
    columns = "hour, user_id, api_key_id, model, requests, errors, rate_limited,"
    columns += " prompt_tokens, completion_tokens"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(
            f"CREATE TEMP TABLE live AS SELECT {columns} FROM usage_hourly;"
            " CREATE TEMP TABLE live_latency AS SELECT * FROM usage_hourly_latency;"
            " DELETE FROM usage_hourly; DELETE FROM usage_hourly_latency;"
        )
        t0 = time.perf_counter()
        backfill = MIGRATIONS[2].sql
        db.executescript("BEGIN;" + backfill[backfill.index("INSERT INTO") :] + "COMMIT;")
        seconds = time.perf_counter() - t0
        differ = db.execute(
            f"SELECT count(*) FROM (SELECT {columns} FROM usage_hourly EXCEPT"
            " SELECT * FROM live) UNION ALL SELECT count(*) FROM (SELECT * FROM"
            " usage_hourly_latency EXCEPT SELECT * FROM live_latency)"
        ).fetchall()
    return seconds, differ == [(0,), (0,)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dense-rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp:
        now = time.time()
        store = await SqliteStore.open(Path(tmp) / "dense.db")
        try:
            dense, _ = await fill(store, args.dense_rows, now, rate=20_000)
        finally:
            await store.close()
        path = Path(tmp) / "llmgw.db"
        store = await SqliteStore.open(path)
        try:
            inserting, total = await fill(store, args.rows, now)
        finally:
            await store.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            hourly, latency = (
                db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("usage_hourly", "usage_hourly_latency")
            )
            week = db.execute(
                "SELECT count(*) FROM request_logs WHERE timestamp >= ?",
                (iso_utc(rollups.window_start(7, now)),),
            ).fetchone()[0]
        print(f"{args.rows:,} rows over {DAYS} days; {week:,} in the 7-day window;")
        print(f"rollups: {hourly:,} usage_hourly rows, {latency:,} usage_hourly_latency rows")
        print(
            f"ingest: {args.rows / inserting:,.0f} rows/s in insert_request_logs"
            f" (batches of 1000; {total:.0f} s with generating the rows)"
        )
        print(
            f"ingest at production density: {args.dense_rows / dense:,.0f} rows/s"
            f" ({args.dense_rows:,} rows arriving 20,000 a second)"
        )
        print()
        print(f"{'7-day query':<34}{'median ms':>10}{'min ms':>10}")
        store = await SqliteStore.open(path)
        try:
            for by in rollups.GROUPINGS:

                def query(by: rollups.Grouping = by) -> Awaitable[UsageReport]:
                    return store.usage_summary(days=7, by=by, now=now)

                median, low = await timed(query, args.runs)
                print(f"{'summary by=' + by + ' (rollups)':<34}{median:>10.1f}{low:>10.1f}")
            summary = await store.usage_summary(days=7, by="user", now=now)
        finally:
            await store.close()
        since = rollups.window_start(7, now)
        median, low = await timed(
            lambda: asyncio.to_thread(raw_by_user, path, since), max(3, args.runs // 2)
        )
        print(f"{'by=user, raw SQL on request_logs':<34}{median:>10.1f}{low:>10.1f}")
        print()
        same = agree(summary, raw_by_user(path, since))
        print(f"rollups agree with request_logs (by=user): {same}")
        seconds, same = backfill(path)
        print(f"migration 3 backfill of {args.rows:,} rows: {seconds:.1f} s; same as live: {same}")


if __name__ == "__main__":
    asyncio.run(main())
