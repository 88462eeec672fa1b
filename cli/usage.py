"""`llmgw usage`: requests, errors, tokens and latency per user, key, model, endpoint or
day."""

from __future__ import annotations

import click

from llmgw.admin_client import AdminClient
from llmgw.api_types import UsageFigures, UsageReport
from llmgw.rollups import GROUPINGS

from .limits import budget_use
from .output import emit_json, emit_table, json_option
from .state import CliState, pass_state

_HEADERS = ("REQUESTS", "ERRORS", "429S", "PROMPT", "COMPLETION", "TOTAL TOK", "P50 MS", "P95 MS")


@click.command()
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=7,
    show_default=True,
    help="The last N×24 hours, counted in whole hours.",
)
@click.option(
    "--by",
    type=click.Choice(GROUPINGS),
    default="user",
    show_default=True,
    help="What to group by.",
)
@json_option
@pass_state
def usage(state: CliState, days: int, by: str, as_json: bool) -> None:
    """Show requests, errors, 429s, tokens and latency per user, key, model, endpoint or day."""
    if as_json:  # the report as the gateway sends it; budgets: `key show`, `user budgets`
        emit_json(state.call(lambda c: c.usage(days, by)))
        return
    report, budgets = state.call(lambda c: _with_budgets(c, days, by))
    if by == "key":
        headers: tuple[str, ...] = ("KEY", "PREFIX", "USER", *_HEADERS, "BUDGET USED")
        # Only by=key do the groups carry their key's id, prefix and user.
        rows = [
            [g.get("key_id"), g.get("key_prefix"), g.get("user_id"), *_figures(g), budget]
            for g in report["data"]
            for budget in [budgets.get(g["group"])]
        ]
        rows.append(["TOTAL", "", "", *_figures(report["total"]), ""])
    elif by == "user":
        headers = ("USER", *_HEADERS, "BUDGET USED")
        rows = [[g["group"], *_figures(g), budgets.get(g["group"])] for g in report["data"]]
        rows.append(["TOTAL", *_figures(report["total"]), ""])
    else:
        headers = (by.upper(), *_HEADERS)
        rows = [[g["group"], *_figures(g)] for g in report["data"]]
        rows.append(["TOTAL", *_figures(report["total"])])
    emit_table(rows, headers)


async def _with_budgets(
    c: AdminClient, days: int, by: str
) -> tuple[UsageReport, dict[str | int | None, str]]:
    """The report, and by key or user the budget of each row that has one, as used/limit
    in its period now (from the limiter, through `GET /keys/{id}`: the budget's period,
    not the report's days)."""
    report = await c.usage(days, by)
    if by not in ("key", "user"):
        return report, {}
    groups = {g["group"] for g in report["data"]}
    keys = [k for k in await c.list_keys() if (k["id"] if by == "key" else k["user_id"]) in groups]
    if by == "key":
        tiers = {t["name"]: t for t in (await c.tiers())["data"]}
        # A key has a budget of its own, or its tier's (0: none).
        wanted: dict[int, tuple[int, str]] = {}
        for k in keys:
            tier = tiers.get(k["tier"])
            own = k["budget_tokens"]
            size = own if own is not None else tier["budget_tokens"] if tier else 0
            if size:
                period = k["budget_period"] or (tier["budget_period"] if tier else "month")
                wanted[k["id"]] = (size, period)
        return report, {
            key_id: budget_use((await c.get_key(key_id))["limits"], "key_budget", *limit)
            for key_id, limit in wanted.items()
        }
    one_key = {k["user_id"]: k["id"] for k in reversed(keys)}  # any key of the user will do
    shown: dict[str | int | None, str] = {}
    for b in await c.user_budgets():
        if b["user_id"] in one_key:
            limits = (await c.get_key(one_key[b["user_id"]]))["limits"]
            shown[b["user_id"]] = budget_use(
                limits, "user_budget", b["budget_tokens"], b["budget_period"]
            )
    return report, shown


def _figures(group: UsageFigures) -> list[object]:
    return [
        group["requests"],
        group["errors"],
        group["rate_limited"],
        group["prompt_tokens"],
        group["completion_tokens"],
        group["total_tokens"],
        _ms(group["latency_p50_ms"]),
        _ms(group["latency_p95_ms"]),
    ]


def _ms(value: float | None) -> str | None:
    # The percentiles come from a histogram good to 25 %: more digits would be noise.
    return None if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"
