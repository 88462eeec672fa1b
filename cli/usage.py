"""`llmgw usage`: requests, errors, tokens and latency per user, key, model or day."""

from __future__ import annotations

import click

from llmgw.api_types import UsageFigures

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
    type=click.Choice(["user", "key", "model", "day"]),
    default="user",
    show_default=True,
    help="What to group by.",
)
@json_option
@pass_state
def usage(state: CliState, days: int, by: str, as_json: bool) -> None:
    """Show requests, errors, 429s, tokens and latency per user, key, model or day."""
    report = state.call(lambda c: c.usage(days, by))
    if as_json:
        emit_json(report)
        return
    if by == "key":
        headers: tuple[str, ...] = ("KEY", "PREFIX", "USER", *_HEADERS)
        # Only by=key do the groups carry their key's id, prefix and user.
        rows = [
            [g.get("key_id"), g.get("key_prefix"), g.get("user_id"), *_figures(g)]
            for g in report["data"]
        ]
        rows.append(["TOTAL", "", "", *_figures(report["total"])])
    else:
        headers = (by.upper(), *_HEADERS)
        rows = [[g["group"], *_figures(g)] for g in report["data"]]
        rows.append(["TOTAL", *_figures(report["total"])])
    emit_table(rows, headers)


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
