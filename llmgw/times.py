"""The one timestamp format of the database and the admin API: ISO 8601, UTC, to the
millisecond, with a `Z` (it sorts as text, and SQLite's date functions read it)."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime


def iso_utc(epoch: float) -> str:
    """`epoch` as `datetime.fromtimestamp(epoch, UTC)` writes it, to the millisecond.

    A ledger batch formats a thousand of these at a time, on the event loop: the date
    and time of each whole second are made once, and only the milliseconds each time,
    rounded as datetime rounds (the microseconds half to even, then cut to
    milliseconds)."""
    if not 0 <= epoch < 1e11:  # before 1970 or past the year 5138: datetime's own way
        return _iso_utc(epoch)
    fraction, whole = math.modf(epoch)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1
    return f"{_second(int(whole))}.{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=1024)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
