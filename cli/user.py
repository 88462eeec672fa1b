"""`llmgw user ...`: what belongs to a user across all their keys (a token budget)."""

from __future__ import annotations

from collections.abc import Awaitable

import click

from llmgw.admin_client import AdminApiError
from llmgw.api_types import BUDGET_PERIODS, UserBudget

from .output import emit_json, emit_table, json_option, say
from .state import CliState, pass_state


@click.group()
def user() -> None:
    """Manage what a user's keys share (a token budget)."""


@user.command("budget")
@click.argument("user_id")
@click.option(
    "--tokens",
    type=click.IntRange(min=0),
    help="Tokens all the user's keys together may use a period (0: unlimited).",
)
@click.option(
    "--period",
    type=click.Choice(BUDGET_PERIODS),
    help="The budget's calendar period, in UTC (default: month).",
)
@click.option("--clear", is_flag=True, help="Remove the user's budget.")
@json_option
@pass_state
def budget(
    state: CliState,
    user_id: str,
    tokens: int | None,
    period: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Show a user's token budget, set it (--tokens, --period) or remove it (--clear)."""
    if clear and (tokens is not None or period is not None):
        raise click.UsageError("--clear removes the budget: give it without --tokens/--period.")
    if period is not None and tokens is None:
        raise click.UsageError("--period needs --tokens: the budget's size for that period.")
    if clear:
        removed = state.call(lambda c: _or_none(c.clear_user_budget(user_id)))
        if removed is None:
            raise click.ClickException(f"User {user_id!r} has no budget; nothing to remove.")
        if as_json:
            emit_json(removed)
        say(f"Removed the budget of {_describe(removed)}.")
        return
    if tokens is not None:
        changed = state.call(lambda c: c.set_user_budget(user_id, tokens, period or "month"))
        if as_json:
            emit_json(changed)
        say(f"Set the budget of {_describe(changed)}; the next request sees it.")
        return
    shown = state.call(lambda c: _or_none(c.user_budget(user_id)))
    if shown is None:
        raise click.ClickException(
            f"User {user_id!r} has no budget: set one with "
            f"`llmgw user budget {user_id} --tokens N --period month`."
        )
    if as_json:
        emit_json(shown)
        return
    click.echo(f"{shown['user_id']}: {shown['budget_tokens']:,} tokens a {shown['budget_period']}")


@user.command("budgets")
@json_option
@pass_state
def budgets(state: CliState, as_json: bool) -> None:
    """List the users that have a token budget."""
    listed = state.call(lambda c: c.user_budgets())
    if as_json:
        emit_json(listed)
        return
    rows = [[b["user_id"], b["budget_tokens"], b["budget_period"]] for b in listed]
    emit_table(rows, ("USER", "TOKENS", "PERIOD"))


async def _or_none(call: Awaitable[UserBudget]) -> UserBudget | None:
    """The budget `call` answers, or None for 404: the user has none."""
    try:
        return await call
    except AdminApiError as exc:
        if exc.status == 404:
            return None
        raise


def _describe(b: UserBudget) -> str:
    return f"{b['user_id']}: {b['budget_tokens']:,} tokens a {b['budget_period']}"
