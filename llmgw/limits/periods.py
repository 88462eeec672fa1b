"""Budget periods: calendar days, ISO weeks (from Monday) and months, in UTC.

A budget counts the tokens of its period and renews at the period's end. Each period
has a name (`month:2026-12`) under which its spent tokens are kept, so a request
admitted just before midnight settles into the day it was admitted in, and a new
period starts from nothing without anything having to be reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..api_types import BudgetPeriod as Period


@dataclass(frozen=True, slots=True)
class Span:
    name: str  # `day:2026-12-06`, `week:2026-W49`, `month:2026-12`
    start: float  # epoch seconds
    end: float  # epoch seconds: when the budget renews


def span_of(period: Period, now: float) -> Span:
    """The period of kind `period` that `now` (epoch seconds) falls in."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end, name = day, day + timedelta(days=1), f"day:{day:%Y-%m-%d}"
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        end, name = start + timedelta(weeks=1), f"week:{year}-W{week:02d}"
    else:
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
        name = f"month:{start:%Y-%m}"
    return Span(name, start.timestamp(), end.timestamp())
