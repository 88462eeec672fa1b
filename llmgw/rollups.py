"""Usage rollups: hourly aggregates of the ledger, so statistics never scan it.

The store folds every ledger batch into two tables in the batch's own transaction, so
the rollups are always exactly the committed `request_logs`:

- `usage_hourly`: per hour, user, key, model and endpoint (the route, as the ledger
  records it): requests, errors, rate-limited requests, prompt and completion tokens,
  and the summed latency;
- `usage_hourly_latency`: the same cells split by latency bucket, for percentiles.

Definitions (the same in the store's fold, in migration 3's backfill, in the rebuild
by endpoint (SQLite's migration 8, PostgreSQL's 4) and in `bench/README.md`):

- `errors`: status >= 400 except 429: 4xx the gateway or vLLM answered, 5xx, and 499
  (the client went away);
- `rate_limited`: status 429;
- latency: the row's `duration_ms`, over every request except the 429s: the gateway
  refuses those within microseconds, and counting them would pull a throttled user's
  p50 towards zero, telling nothing about how fast the models answer;
- `hour`: the first 13 characters of the row's timestamp (`2026-11-27T18`), text in the
  format family of `llmgw.times`, so ranges compare as text.

Percentiles come from a histogram whose buckets grow by 25 %: bucket 0 is [0, 1 ms),
bucket i is [1.25^(i-1), 1.25^i) ms up to 1.25^60 ms (about 10.9 minutes), and one
overflow bucket holds everything longer. p50 and p95 are interpolated linearly within
the bucket that holds the true (nearest-rank) percentile, so they are within 25 % of
it (within 1 ms below 1 ms); beyond 10.9 minutes the figure is that bound, a floor.

This module is the arithmetic alone: the store reads the sums (`GroupTotals`) and
histograms of a window, and `summarize` turns them into figures.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .api_types import UsageFigures, UsageGroup, UsageReport
from .times import iso_utc

Grouping = Literal["user", "key", "model", "endpoint", "day"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)

GROWTH = 1.25
# Upper bounds of the latency buckets in whole nanoseconds. Integers, so that Python
# (`bucket_of`) and SQL (the store's fold, migration 3's backfill) compare
# `duration_ms * 1e6` against exactly the same numbers and put every row in the same
# bucket. Changing them needs a migration that rebuilds usage_hourly_latency.
BOUNDS_NS: tuple[int, ...] = tuple(round(1e6 * GROWTH**i) for i in range(61))
OVERFLOW = len(BOUNDS_NS)  # the bucket of everything from BOUNDS_NS[-1] up


def bucket_of(duration_ms: float) -> int:
    """The bucket of a duration as stored in request_logs (rounded to the microsecond);
    `add` does the same inline."""
    return bisect.bisect_right(BOUNDS_NS, round(duration_ms, 3) * 1_000_000)


class Fold:
    """The rollup cells of ledger rows as they are stored: per (hour, user, key (0: none),
    model ('': none), endpoint) the sums of `usage_hourly` and the latency buckets of
    `usage_hourly_latency`, and each key's last use. What `add` gets is what the row
    holds (its rounded duration, its timestamp text), so the cells are exactly what SQL
    over the stored rows would sum (migration 3's backfill says the same in SQL)."""

    __slots__ = ("last_used", "latency", "totals")

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str, int, str, str], list[float]] = {}
        self.latency: Counter[tuple[str, str, int, str, str, int]] = Counter()
        self.last_used: dict[int, str] = {}

    def add(
        self,
        timestamp: str,
        user_id: str,
        api_key_id: int | None,
        model: str | None,
        endpoint: str,
        status: int,
        duration_ms: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        cell = (timestamp[:13], user_id, api_key_id or 0, model or "", endpoint)
        sums = self.totals.get(cell)
        if sums is None:
            sums = self.totals[cell] = [0, 0, 0, 0, 0, 0.0]
        sums[0] += 1
        sums[3] += prompt_tokens
        sums[4] += completion_tokens
        if api_key_id is not None and timestamp > self.last_used.get(api_key_id, ""):
            self.last_used[api_key_id] = timestamp
        if status == 429:  # refused at once: counted, not timed
            sums[2] += 1
            return
        if status >= 400:
            sums[1] += 1
        sums[5] += duration_ms
        self.latency[(*cell, bisect.bisect_right(BOUNDS_NS, duration_ms * 1_000_000))] += 1


def bucket_range(bucket: int) -> tuple[float, float | None]:
    """A bucket's [low, high) in milliseconds; high is None for the overflow bucket."""
    low = 0.0 if bucket == 0 else BOUNDS_NS[bucket - 1] / 1e6
    return low, (BOUNDS_NS[bucket] / 1e6 if bucket < OVERFLOW else None)


# --- reading ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupTotals:
    """One group's sums over a window, as the store reads them from `usage_hourly`."""

    name: Any  # the user, key id, model, endpoint or day; None (or 0, '') for none
    counts: tuple[int, int, int, int, int]  # requests, errors, 429s, prompt, completion
    duration_ms_sum: float
    user_id: str  # by key: the key's user (a key never changes hands)


def grouping(value: str) -> Grouping:
    for known in GROUPINGS:
        if value == known:
            return known
    raise ValueError(f"{value!r} is not one of {', '.join(GROUPINGS)}")


def window_start(days: int, now: float) -> float:
    """The start of the window `days` covers: the start of the hour days×24 hours ago."""
    return (now // 3600) * 3600 - days * 86400


def summarize(
    groups: Sequence[GroupTotals],
    histograms: Mapping[Any, Mapping[int, int]],
    key_prefixes: Mapping[int, str],
    *,
    days: int,
    by: Grouping,
    since: float,
) -> UsageReport:
    """The body of `GET /usage`: each group's figures and the total, from the sums and
    latency histograms of the window that starts at `since`."""
    data: list[UsageGroup] = []
    overall: Counter[int] = Counter()
    for group in groups:
        histogram = histograms.get(group.name, {})
        overall.update(histogram)
        entry = _group(group.name or None, _figures(group.counts, group.duration_ms_sum, histogram))
        if by == "key":
            entry["key_id"] = group.name or None
            entry["key_prefix"] = key_prefixes.get(group.name)
            entry["user_id"] = group.user_id
        data.append(entry)
    if by == "day":
        data.sort(key=lambda e: str(e["group"]))  # a calendar reads in date order
    else:  # the biggest first; ties in a stable order, the unnamed group last
        data.sort(key=lambda e: (-e["requests"], e["group"] is None, e["group"] or 0))
    sums = [sum(g.counts[i] for g in groups) for i in range(5)]
    total = _figures(sums, sum(g.duration_ms_sum for g in groups), overall)
    return UsageReport(days=days, by=by, since=iso_utc(since), data=data, total=total)


def _group(name: str | int | None, figures: UsageFigures) -> UsageGroup:
    return UsageGroup(
        group=name,
        requests=figures["requests"],
        errors=figures["errors"],
        rate_limited=figures["rate_limited"],
        prompt_tokens=figures["prompt_tokens"],
        completion_tokens=figures["completion_tokens"],
        total_tokens=figures["total_tokens"],
        latency_mean_ms=figures["latency_mean_ms"],
        latency_p50_ms=figures["latency_p50_ms"],
        latency_p95_ms=figures["latency_p95_ms"],
    )


def _figures(
    counts: Sequence[int], duration_sum: float, histogram: Mapping[int, int]
) -> UsageFigures:
    requests, errors, rate_limited, prompt, completion = counts
    timed = requests - rate_limited
    return UsageFigures(
        requests=requests,
        errors=errors,
        rate_limited=rate_limited,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        latency_mean_ms=round(duration_sum / timed, 3) if timed else None,
        latency_p50_ms=percentile(histogram, 0.50),
        latency_p95_ms=percentile(histogram, 0.95),
    )


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile of a bucket histogram, interpolated within its bucket."""
    rank = q * sum(histogram.values())
    if rank <= 0:
        return None
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count and seen + count >= rank:
            low, high = bucket_range(bucket)
            if high is None:
                return low  # nothing known above the last bound: report it as a floor
            return round(low + (high - low) * (rank - seen) / count, 3)
        seen += count
    return None  # unreachable: the ranks add up to the total
