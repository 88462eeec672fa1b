"""`llmgw status`: is the gateway well, are its upstreams, and how busy is it."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from llmgw.admin_client import AdminClient

from .output import cell, emit_json, emit_table, json_option
from .state import CliState, pass_state

# Long enough for the 60 s rates, short enough to keep the answer small.
STATS_SECONDS = 60
TOP_KEYS = 5


@click.command()
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show health, upstreams, live rates and the busiest keys."""

    async def fetch(client: AdminClient) -> tuple[dict[str, Any], dict[str, Any]]:
        health, stats = await asyncio.gather(client.health(), client.stats(STATS_SECONDS))
        return health, stats

    # An unhealthy gateway still answers (503 with the same body): that is a report,
    # not a failure, so the exit status stays 0 and the text says so plainly.
    health, stats = state.call(fetch)
    if as_json:
        emit_json({"health": health, "stats": stats})
        return
    _print_health(health)
    click.echo()
    _print_upstreams(stats.get("upstreams") or health.get("upstreams") or [])
    click.echo()
    _print_rates(stats)
    click.echo()
    _print_keys(stats)


def _print_health(health: dict[str, Any]) -> None:
    condition = health.get("status")
    if condition == "ok":
        verdict = "ok"
    elif condition == "degraded":
        verdict = "degraded (still serving)"
    else:
        verdict = f"UNHEALTHY ({condition}): not serving requests"
    reasons = []
    if health.get("draining"):
        reasons.append("shutting down")
    upstreams = health.get("upstreams") or []
    if upstreams and not any(u.get("healthy") for u in upstreams):
        reasons.append("no healthy upstream")
    database, ledger = health.get("database") or {}, health.get("ledger") or {}
    if database.get("error"):
        reasons.append(f"database: {database['error']}")
    if ledger.get("last_error"):
        reasons.append(f"ledger: {ledger['last_error']}")
    if ledger.get("dropped"):
        reasons.append(f"{ledger['dropped']} usage records lost")
    click.echo(f"gateway    {verdict}" + (f" - {'; '.join(reasons)}" if reasons else ""))
    click.echo(f"uptime     {_duration(health.get('uptime_s'))}")
    click.echo(f"keys       {cell(health.get('keys'))} known")
    click.echo(
        f"ledger     {cell(ledger.get('pending'))} pending, {cell(ledger.get('written'))} written"
    )


def _print_upstreams(upstreams: list[dict[str, Any]]) -> None:
    rows = [
        [
            u.get("url"),
            "yes" if u.get("healthy") else "NO",
            None if u.get("latency_ms") is None else f"{u['latency_ms']:g} ms",
            u.get("in_flight"),
            u.get("models"),
            u.get("last_error"),
        ]
        for u in upstreams
    ]
    emit_table(rows, ["UPSTREAM", "HEALTHY", "LATENCY", "IN FLIGHT", "MODELS", "LAST ERROR"])


def _print_rates(stats: dict[str, Any]) -> None:
    rates = stats.get("rates") or {}
    minute, recent = rates.get("60s") or {}, rates.get("10s") or {}
    total = stats.get("total") or {}
    click.echo("last 60 s   (the last 10 s in brackets)")
    click.echo(
        f"requests   {_per_s(minute, 'requests')}/s ({_per_s(recent, 'requests')}/s), "
        f"{cell(minute.get('requests'))} in all"
    )
    click.echo(
        f"tokens     {_per_s(minute, 'tokens')}/s ({_per_s(recent, 'tokens')}/s), "
        f"{cell(minute.get('tokens'))} in all"
    )
    click.echo(f"errors     {cell(minute.get('errors'))}")
    click.echo(f"429s       {cell(minute.get('rate_limited'))}")
    click.echo(
        f"now        {cell(total.get('in_flight'))} requests in flight, "
        f"{cell(total.get('streams'))} streams open"
    )


def _print_keys(stats: dict[str, Any]) -> None:
    keys = (stats.get("keys") or [])[:TOP_KEYS]
    if not keys:
        click.echo("no key active in the last 60 s")
        return
    click.echo(f"busiest keys ({cell(stats.get('keys_active'))} active in the last 60 s)")
    rows = []
    for k in keys:
        budget = k.get("budget") or {}
        rows.append(
            [
                k.get("key_id"),
                k.get("key_prefix"),
                "(deleted)" if k.get("user_id") is None else k["user_id"],
                k.get("tier"),
                f"{k.get('requests_per_s', 0):.2f}",
                f"{k.get('tokens_per_s', 0):.1f}",
                k.get("requests"),
                k.get("errors"),
                k.get("rate_limited"),
                k.get("streams"),
                _left(budget.get("minute")),
                _left(budget.get("hour")),
            ]
        )
    headers = ["ID", "PREFIX", "USER", "TIER", "REQ/S", "TOK/S", "REQS", "ERRORS", "429S"]
    emit_table(rows, [*headers, "STREAMS", "LEFT/MIN", "LEFT/HOUR"])


def _per_s(rates: dict[str, Any], name: str) -> str:
    value = rates.get(f"{name}_per_s")
    return "-" if value is None else f"{value:.2f}"


def _left(window: dict[str, Any] | None) -> str:
    return "-" if not window else f"{window['remaining']}/{window['limit']}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"
