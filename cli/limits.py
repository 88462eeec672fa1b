"""How the CLI shows limits: what is left of each of a key's limits now, and a
budget's use (`key show`, `user budget`, `usage`)."""

from __future__ import annotations

from typing import Literal

from llmgw.api_types import BudgetView, InFlightView, LimitsView, WindowBudget


def limit_lines(limits: LimitsView | None) -> list[str]:
    """Each limit as it applies now, one line each, for `key show`."""
    if limits is None:
        return ["limits now          unknown: the gateway cannot read them (see `llmgw status`)"]
    return [
        "limits now",
        _line("requests/minute", _window(limits["requests_per_minute"], "requests")),
        _line("requests/hour", _window(limits["requests_per_hour"], "requests")),
        _line("tokens/minute", _window(limits["tokens_per_minute"], "tokens")),
        _line("tokens/day", _window(limits["tokens_per_day"], "tokens")),
        _line("in flight", _in_flight(limits["in_flight"])),
        _line("key budget", _budget(limits["key_budget"])),
        _line("user budget", _budget(limits["user_budget"])),
    ]


def budget_use(
    limits: LimitsView | None,
    which: Literal["key_budget", "user_budget"],
    size: int,
    period: str,
) -> str:
    """A budget of `size` tokens a `period` as a table cell: used/limit (period), with
    `?` for used when the limits cannot be read."""
    budget = limits[which] if limits else None
    if budget is None:
        return f"?/{size:,} ({period})"
    return f"{budget['used']:,}/{budget['limit']:,} ({budget['period']})"


def _line(name: str, text: str) -> str:
    return f"  {name:<18}{text}"


def _window(window: WindowBudget | None, unit: str) -> str:
    if window is None:
        return "unlimited"
    return (
        f"{window['remaining']:,} of {window['limit']:,} {unit} left,"
        f" full again in {window['reset_s']:g} s"
    )


def _in_flight(in_flight: InFlightView | None) -> str:
    if in_flight is None:
        return "unlimited"
    return f"{in_flight['current']}/{in_flight['limit']} requests being served"


def _budget(budget: BudgetView | None) -> str:
    if budget is None:
        return "none"
    return (
        f"{budget['used']:,} of {budget['limit']:,} tokens used this {budget['period']},"
        f" {budget['remaining']:,} left; renews at {budget['renews_at']}"
    )
