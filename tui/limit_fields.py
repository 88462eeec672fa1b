"""A key's own limits as the TUI edits and shows them: which there are, how each is
typed, and what an empty field (the tier's value) and 0 (no limit) mean.

The form checks what is typed here, before anything is sent: the admin sees the
mistake by the field at once, and a number never travels as text. The gateway stays
the judge of everything else (a tier's name, an expiry, the models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from llmgw.api_types import BUDGET_PERIODS, KeyView, TierView

LimitName = Literal[
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
    "budget_tokens",
]
PERIODS = BUDGET_PERIODS
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


# How the keys tab names each limit the key sets itself.
SHOWN_AS: dict[LimitName, str] = {
    "requests_per_minute": "requests/min",
    "requests_per_hour": "requests/hour",
    "tokens_per_minute": "tokens/min",
    "tokens_per_day": "tokens/day",
    "max_in_flight": "in flight",
}


def describe_limits(key: KeyView) -> str:
    """The limits the key sets itself, in a line; the rest are its tier's."""
    own = [
        f"{shown} " + ("unlimited" if key[name] == 0 else f"{key[name]:,}")
        for name, shown in SHOWN_AS.items()
        if key[name] is not None
    ]
    tokens, period = key["budget_tokens"], key["budget_period"]
    if tokens == 0:
        own.append("no budget")  # its period does not matter
    elif tokens is not None:
        own.append(f"budget {tokens:,} tokens " + (f"a {period}" if period else "(tier's period)"))
    elif period is not None:
        own.append(f"budget (tier's) a {period}")
    tier = f"as tier {key['tier']}"
    return f"limits: {' · '.join(own)}; the rest {tier}" if own else f"limits: {tier}"
