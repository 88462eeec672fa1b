"""A key's own limits as the TUI edits and shows them: which there are, how each is
typed, and what an empty field (the tier's value) and 0 (no limit) mean.

The form checks what is typed here, before anything is sent: the admin sees the
mistake by the field at once, and a number never travels as text. The gateway stays
the judge of everything else (a tier's name, an expiry, the models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from llmgw.api_types import KeyView, TierView

LimitName = Literal[
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
    "budget_tokens",
]
Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = get_args(Period)
WHOLE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Limit:
    name: LimitName
    label: str  # how a refusal names it
    least: int  # the request windows are always on: 0 ("no limit") is for the others


LIMITS: tuple[Limit, ...] = (
    Limit("requests_per_minute", "Requests per minute", 1),
    Limit("requests_per_hour", "Requests per hour", 1),
    Limit("tokens_per_minute", "Tokens per minute", 0),
    Limit("tokens_per_day", "Tokens per day", 0),
    Limit("max_in_flight", "Requests in flight", 0),
    Limit("budget_tokens", "Budget tokens", 0),
)
LIMIT_NAMES: tuple[LimitName, ...] = tuple(limit.name for limit in LIMITS)


class InvalidLimit(ValueError):
    """What was typed in the field `name` is not a limit; `message` says what is."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def parse_limit(limit: Limit, typed: str) -> int | None:
    """The field's value in the admin API's terms: None (empty: the tier's) or a whole
    number; digits may be grouped with , or _ as a budget of 5,000,000 is written."""
    text = typed.strip()
    if not text:
        return None
    meaning = "empty = the tier's" + (", 0 = no limit" if limit.least == 0 else "")
    digits = text.replace(",", "").replace("_", "")
    if not WHOLE.fullmatch(digits):
        message = f"{limit.label}: {text!r} is not a whole number ({meaning})."
        raise InvalidLimit(limit.name, message)
    value = int(digits)
    if value < limit.least:
        raise InvalidLimit(
            limit.name,
            f"{limit.label}: at least {limit.least}; a key always has a request limit "
            "(empty = the tier's).",
        )
    return value


def limit_texts(key: KeyView | None) -> dict[LimitName, str]:
    """What the form's limit fields show at first: the key's own values, or nothing."""
    return {name: "" if key is None else _text(key[name]) for name in LIMIT_NAMES}


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def tier_placeholder(tier: TierView, name: LimitName) -> str:
    """What an empty field stands for under this tier, shown faintly in it."""
    value = tier[name]
    return "no limit" if value == 0 else str(value)


def _figure(value: int | None) -> str:
    return "tier's" if value is None else "∞" if value == 0 else f"{value:,}"


def describe_limits(key: KeyView) -> str:
    """The key's own limits in a line: `tier's` where the tier decides, ∞ for none."""
    if all(key[name] is None for name in LIMIT_NAMES) and key["budget_period"] is None:
        return f"limits: all the tier's ({key['tier']})"
    tokens, period = key["budget_tokens"], key["budget_period"]
    if tokens == 0:
        budget = "∞"  # no budget: its period does not matter
    elif tokens is None and period is None:
        budget = "tier's"
    else:
        budget = f"{_figure(tokens)} tokens a " + (period or "tier's period")
    return (
        f"limits: requests {_figure(key['requests_per_minute'])}/min, "
        f"{_figure(key['requests_per_hour'])}/hour · "
        f"tokens {_figure(key['tokens_per_minute'])}/min, {_figure(key['tokens_per_day'])}/day"
        f" · in flight {_figure(key['max_in_flight'])} · budget {budget}"
    )
