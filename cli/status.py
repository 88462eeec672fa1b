"""`llmgw status`: is the gateway well, are its upstreams and how loaded (vLLM's own
figures: requests waiting and running, KV cache and prefix cache), and how busy is it:
the busiest keys with what is left of each of their limits."""

from __future__ import annotations

import asyncio
from typing import Literal

import click

from llmgw.admin_client import AdminClient
from llmgw.api_types import (
    BudgetView,
    BusyKey,
    Health,
    LimitsView,
    Rate,
    Stats,
    UpstreamStatus,
    WindowBudget,
)

from .output import cell, emit_json, emit_table, json_option
from .state import CliState, pass_state

# Long enough for the 60 s rates, short enough to keep the answer small.
STATS_SECONDS = 60
TOP_KEYS = 5
# What a limit the key does not have shows (a limit that cannot be read shows "-").
OFF = "unlimited"


@click.command()
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show health, upstreams, live rates and the busiest keys."""

    async def fetch(client: AdminClient) -> tuple[Health, Stats]:
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
    _print_upstreams(stats["upstreams"] or health["upstreams"])
    click.echo()
    _print_rates(stats)
    click.echo()
    _print_keys(stats)


def _print_health(health: Health) -> None:
    condition = health["status"]
    if condition == "ok":
        verdict = "ok"
    elif condition == "degraded":
        verdict = "degraded (still serving)"
    else:
        verdict = f"UNHEALTHY ({condition}): not serving requests"
    reasons = []
    if health["draining"]:
        reasons.append("shutting down")
    upstreams = health["upstreams"]
    if upstreams and not any(u["healthy"] for u in upstreams):
        reasons.append("no healthy upstream")
    database, ledger = health["database"], health["ledger"]
    if database["error"]:
        reasons.append(f"database: {database['error']}")
    if ledger["last_error"]:
        reasons.append(f"ledger: {ledger['last_error']}")
    if ledger["dropped"]:
        reasons.append(f"{ledger['dropped']} usage records lost")
    keys = health["keys"]
    if keys["error"]:
        reasons.append(f"keys: {keys['error']}")
    click.echo(f"gateway    {verdict}" + (f" - {'; '.join(reasons)}" if reasons else ""))
    # Replicas share keys and usage (the database) but count their live figures alone.
    click.echo(f"replica    {health['replica']} (the live figures below are this replica's)")
    click.echo(f"uptime     {_duration(health['uptime_s'])}")
    heard = ", listening" if keys["listening"] else ""
    click.echo(
        f"keys       {cell(keys['count'])} known, version {cell(keys['version'])},"
        f" synced {keys['synced_s_ago']:g} s ago{heard}"
    )
    click.echo(f"ledger     {cell(ledger['pending'])} pending, {cell(ledger['written'])} written")


def _print_upstreams(upstreams: list[UpstreamStatus]) -> None:
    headers = ["UPSTREAM", "HEALTHY", "LATENCY", "IN FLIGHT", "LOAD", "WAITING", "RUNNING"]
    more = ["KV CACHE", "PREFIX HITS", "MODELS", "LAST ERROR"]
    emit_table([upstream_cells(u) for u in upstreams], [*headers, *more])


def upstream_cells(u: UpstreamStatus) -> list[str]:
    """An upstream's row: its health (and whether it is full: passed over while another
    has room), then vLLM's load as routing sees it; a dash for what its /metrics did not
    say (not read, or not exposed: its load is then this gateway's requests in flight)."""
    healthy = "NO" if not u["healthy"] else "yes (full)" if u["full"] else "yes"
    return [
        u["url"],
        healthy,
        "-" if u["latency_ms"] is None else f"{u['latency_ms']:g} ms",
        cell(u["in_flight"]),
        f"{u['load']:g}",
        cell(u["waiting"]),
        cell(u["running"]),
        _percent(u["kv_cache_usage"]),
        _percent(u["prefix_cache_hit_rate"]),
        cell(u["models"]),
        cell(u["last_error"]),
    ]


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def _print_rates(stats: Stats) -> None:
    # A gateway whose window is shorter than a span reports the window's instead.
    minute, recent = stats["rates"].get("60s"), stats["rates"].get("10s")
    total = stats["total"]
    click.echo("last 60 s   (the last 10 s in brackets)")
    click.echo(
        f"requests   {_per_s(minute, 'requests_per_s')}/s "
        f"({_per_s(recent, 'requests_per_s')}/s), {_count(minute, 'requests')} in all"
    )
    click.echo(
        f"tokens     {_per_s(minute, 'tokens_per_s')}/s "
        f"({_per_s(recent, 'tokens_per_s')}/s), {_count(minute, 'tokens')} in all"
    )
    click.echo(f"errors     {_count(minute, 'errors')}")
    click.echo(f"429s       {_count(minute, 'rate_limited')}")
    click.echo(
        f"now        {cell(total['in_flight'])} requests in flight, "
        f"{cell(total['streams'])} streams open"
    )


def _print_keys(stats: Stats) -> None:
    keys = stats["keys"][:TOP_KEYS]
    if not keys:
        click.echo("no key active in the last 60 s")
        return
    click.echo(f"busiest keys ({cell(stats['keys_active'])} active in the last 60 s)")
    rows = [
        [
            k["key_id"],
            k["key_prefix"],
            "(deleted)" if k["user_id"] is None else k["user_id"],
            k["tier"],
            f"{k['requests_per_s']:.2f}",
            f"{k['tokens_per_s']:.1f}",
            k["requests"],
            k["errors"],
            k["rate_limited"],
            k["streams"],
            *limit_cells(k),
        ]
        for k in keys
    ]
    headers = ["ID", "PREFIX", "USER", "TIER", "REQ/S", "TOK/S", "REQS", "ERRORS", "429S"]
    left = ["IN FLIGHT", "LEFT/MIN", "LEFT/HOUR", "TOKENS LEFT/MIN", "BUDGET LEFT"]
    emit_table(rows, [*headers, "STREAMS", *left])


def _per_s(rate: Rate | None, name: Literal["requests_per_s", "tokens_per_s"]) -> str:
    return "-" if rate is None else f"{rate[name]:.2f}"


def _count(rate: Rate | None, name: Literal["requests", "tokens", "errors", "rate_limited"]) -> str:
    return "-" if rate is None else cell(rate[name])


def limit_cells(key: BusyKey) -> list[str]:
    """Requests in flight and what is left of each limit; nothing known of a deleted
    key's (or while the limits cannot be read)."""
    limits = key["limits"]
    if limits is None:
        return ["-"] * 5
    in_flight = limits["in_flight"]
    return [
        OFF if in_flight is None else f"{in_flight['current']}/{in_flight['limit']}",
        _left(limits["requests_per_minute"]),
        _left(limits["requests_per_hour"]),
        _left(limits["tokens_per_minute"]),
        _budget(limits),
    ]


def _left(window: WindowBudget | None) -> str:
    return OFF if window is None else f"{window['remaining']}/{window['limit']}"


def _budget(limits: LimitsView) -> str:
    """The budget nearer its end, the key's or (said so) its user's, and its period."""
    budgets: list[tuple[BudgetView, str]] = [
        (budget, whose)
        for budget, whose in ((limits["key_budget"], ""), (limits["user_budget"], " (user)"))
        if budget is not None
    ]
    if not budgets:
        return OFF
    budget, whose = min(budgets, key=lambda b: b[0]["remaining"])  # the key's on a tie
    return f"{budget['remaining']}/{budget['limit']} a {budget['period']}{whose}"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"
