"""`llmgw key ...`: the whole life of an API key."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from llmgw.admin_client import AdminClient
from llmgw.api_types import BUDGET_PERIODS, KEY_LIMITS, KeyView

from .limits import limit_lines
from .output import cell, emit_json, emit_table, json_option, say
from .state import CliState, pass_state


def limit_or_tier(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A per-key limit: a whole number of at least 1, or `tier` for the tier's own."""
    if value is None or value == "tier":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is not a whole number of at least 1, nor 'tier'")
    return int(value)


def override_or_tier(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A key's token, in-flight or budget limit: a whole number (0: unlimited for this
    key), or `tier` for the tier's own."""
    if value is None or value == "tier":
        return None
    if not value.isdigit():
        raise click.BadParameter(f"{value!r} is not a whole number of 0 or more, nor 'tier'")
    return int(value)


# The key's own token, in-flight and budget limits: (flag, API field, help).
OVERRIDES = (
    ("--tokens-per-minute", "tokens_per_minute", "Tokens (prompt + completion) per minute"),
    ("--tokens-per-day", "tokens_per_day", "Tokens per day"),
    ("--max-in-flight", "max_in_flight", "Requests served at once"),
    ("--budget-tokens", "budget_tokens", "Tokens per budget period"),
)
F = TypeVar("F", bound=Callable[..., Any])


def add_overrides(command: F) -> F:
    """`key add`'s options for the key's own token, in-flight and budget limits."""
    command = click.option(
        "--budget-period",
        type=click.Choice(BUDGET_PERIODS),
        help="The calendar period (UTC) of the budget, instead of the tier's.",
    )(command)
    for flag, name, text in reversed(OVERRIDES):
        command = click.option(
            flag,
            name,
            type=click.IntRange(min=0),
            help=f"{text}, instead of the tier's (0: unlimited).",
        )(command)
    return command


def update_overrides(command: F) -> F:
    """`key update`'s: the same, each also taking `tier` to drop the key's own."""
    command = click.option(
        "--budget-period",
        type=click.Choice([*BUDGET_PERIODS, "tier"]),
        help="The budget's calendar period (UTC), or 'tier'.",
    )(command)
    for flag, name, text in reversed(OVERRIDES):
        command = click.option(
            flag,
            name,
            callback=override_or_tier,
            metavar="N|tier",
            help=f"{text} (0: unlimited), or 'tier'.",
        )(command)
    return command


@click.group()
def key() -> None:
    """Manage API keys."""


@key.command("add")
@click.option("--user", "user_id", required=True, help="Who the key is for (user or team id).")
@click.option("--tier", help="Rate-limit tier (default: [admin] default_tier).")
@click.option("--description", help="What the key is for.")
@click.option("--expires", help="Expiry: 2027-01-31, an ISO datetime, 30d / 12h / 2w, or 'never'.")
@click.option("--model", "models", multiple=True, help="Allow only this model (repeatable).")
@click.option(
    "--rpm", type=click.IntRange(min=1), help="Requests per minute, instead of the tier's."
)
@click.option("--rph", type=click.IntRange(min=1), help="Requests per hour, instead of the tier's.")
@add_overrides
@json_option
@pass_state
def add(
    state: CliState,
    user_id: str,
    tier: str | None,
    description: str | None,
    expires: str | None,
    models: tuple[str, ...],
    rpm: int | None,
    rph: int | None,
    tokens_per_minute: int | None,
    tokens_per_day: int | None,
    max_in_flight: int | None,
    budget_tokens: int | None,
    budget_period: str | None,
    as_json: bool,
) -> None:
    """Create a key and print it (shown this once only)."""
    created = state.call(
        lambda c: c.create_key(
            user_id,
            tier=tier,
            description=description,
            expires_at=None if expires == "never" else expires,
            allowed_models=list(models) or None,
            requests_per_minute=rpm,
            requests_per_hour=rph,
            tokens_per_minute=tokens_per_minute,
            tokens_per_day=tokens_per_day,
            max_in_flight=max_in_flight,
            budget_tokens=budget_tokens,
            budget_period=budget_period,
        )
    )
    if as_json:
        emit_json(created)
        return
    click.echo(created["key"])
    say(f"Created key {_describe(created)}. Store it now: it will not be shown again.")


@key.command("list")
@click.option("--user", "user_id", help="Only this user's keys.")
@click.option("--tier", help="Only keys of this tier.")
@click.option("--active/--inactive", default=None, help="Only active (or only revoked) keys.")
@json_option
@pass_state
def list_(
    state: CliState, user_id: str | None, tier: str | None, active: bool | None, as_json: bool
) -> None:
    """List keys (never their secrets)."""
    keys = state.call(lambda c: c.list_keys(user_id=user_id, tier=tier, active=active))
    if as_json:
        emit_json(keys)
        return
    emit_table([_row(k) for k in keys], _HEADERS)


@key.command("show")
@click.argument("key_id", type=int)
@json_option
@pass_state
def show(state: CliState, key_id: int, as_json: bool) -> None:
    """Show one key's settings, its limits and what is left of each now."""
    shown = state.call(lambda c: c.get_key(key_id))
    if as_json:
        emit_json(shown)
        return
    for name, value in shown.items():
        if name == "limits":
            continue
        if name in KEY_LIMITS and value is None:
            value = "tier"  # no override: the tier's limit applies
        click.echo(f"{name:<20} {cell(value)}")
    click.echo("")
    for line in limit_lines(shown["limits"]):
        click.echo(line)


@key.command("update")
@click.argument("key_id", type=int)
@click.option("--tier", help="Move the key to this tier.")
@click.option("--description", help="New description.")
@click.option("--expires", help="New expiry (2027-01-31, ISO datetime, 30d), or 'never'.")
@click.option("--model", "models", multiple=True, help="Allow only these models (repeatable).")
@click.option("--all-models", is_flag=True, help="Allow every model again.")
@click.option(
    "--rpm", callback=limit_or_tier, metavar="N|tier", help="Requests per minute, or 'tier'."
)
@click.option(
    "--rph", callback=limit_or_tier, metavar="N|tier", help="Requests per hour, or 'tier'."
)
@update_overrides
@click.option("--enable/--disable", "active", default=None, help="Re-activate or suspend the key.")
@json_option
@pass_state
def update(
    state: CliState,
    key_id: int,
    tier: str | None,
    description: str | None,
    expires: str | None,
    models: tuple[str, ...],
    all_models: bool,
    rpm: int | None,
    rph: int | None,
    tokens_per_minute: int | None,
    tokens_per_day: int | None,
    max_in_flight: int | None,
    budget_tokens: int | None,
    budget_period: str | None,
    active: bool | None,
    as_json: bool,
) -> None:
    """Change a key's settings; the next request sees them."""
    ctx = click.get_current_context()
    if models and all_models:
        raise click.UsageError("--model and --all-models contradict each other.")
    changes: dict[str, Any] = {}
    for name, value in (("tier", tier), ("description", description)):
        if value is not None:
            changes[name] = value
    if expires is not None:
        changes["expires_at"] = None if expires == "never" else expires
    if models or all_models:
        changes["allowed_models"] = list(models) or None
    # None from --rpm means 'tier' (clear the override); an absent option changes nothing.
    if ctx.get_parameter_source("rpm") is click.core.ParameterSource.COMMANDLINE:
        changes["requests_per_minute"] = rpm
    if ctx.get_parameter_source("rph") is click.core.ParameterSource.COMMANDLINE:
        changes["requests_per_hour"] = rph
    # The same for the token, in-flight and budget limits ('tier': None, the tier's).
    limits: dict[str, int | str | None] = {
        "tokens_per_minute": tokens_per_minute,
        "tokens_per_day": tokens_per_day,
        "max_in_flight": max_in_flight,
        "budget_tokens": budget_tokens,
        "budget_period": None if budget_period == "tier" else budget_period,
    }
    for field, setting in limits.items():
        if ctx.get_parameter_source(field) is click.core.ParameterSource.COMMANDLINE:
            changes[field] = setting
    if active is not None:
        changes["is_active"] = active
    if not changes:
        raise click.UsageError("Nothing to change: give at least one option (see --help).")

    async def change(c: AdminClient) -> tuple[KeyView, KeyView]:
        before = await c.get_key(key_id)
        return before, await c.update_key(key_id, changes)

    before, updated = state.call(change)
    if as_json:
        emit_json(updated)
        return
    say(f"Updated key {_describe(updated)}. {_state(updated, before)}")


@key.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_state
def revoke(state: CliState, key_id: int, as_json: bool) -> None:
    """Revoke a key: refused from the very next request."""

    async def revoke_(c: AdminClient) -> tuple[KeyView, KeyView]:
        before = await c.get_key(key_id)
        return before, await c.revoke_key(key_id)

    before, revoked = state.call(revoke_)
    if as_json:
        emit_json(revoked)
        return
    if not before["is_active"]:
        say(f"Key {_describe(revoked)} was already revoked; nothing changed.")
        return
    say(f"Revoked key {_describe(revoked)}. {_state(revoked, before)}")


@key.command("rotate")
@click.argument("key_id", type=int)
@json_option
@pass_state
def rotate(state: CliState, key_id: int, as_json: bool) -> None:
    """Give a key a new secret (same id and history); the old one stops working."""
    rotated = state.call(lambda c: c.rotate_key(key_id))
    if as_json:
        emit_json(rotated)
        return
    click.echo(rotated["key"])
    say(
        f"Rotated key {_describe(rotated)}: the old secret is refused from now on. "
        "Store the new one now: it will not be shown again."
    )
    if not _usable(rotated):  # a new secret for a key that is refused would puzzle
        say(_state(rotated, rotated, to="to use the new secret"))


@key.command("delete")
@click.argument("key_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def delete(state: CliState, key_id: int, yes: bool, as_json: bool) -> None:
    """Delete a key for good (its usage history stays)."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("Refusing to delete without confirmation: add --yes.")
        click.confirm(f"Delete key {key_id} for good?", abort=True, err=True)
    deleted = state.call(lambda c: c.delete_key(key_id))
    if as_json:
        emit_json(deleted)
        return
    say(f"Deleted key {_describe(deleted)}.")


def _state(key: KeyView, before: KeyView, to: str = "to let it in again") -> str:
    """The key's state after a change, and the command that lets it in if it is refused."""
    if not key["is_active"]:
        enable = f"`llmgw key update {key['id']} --enable`"
        if not before["is_active"]:
            return f"It is still revoked: {enable} {to}."
        return f"It is revoked: refused from the very next request ({enable} {to})."
    if _expired(key):
        extend = f"`llmgw key update {key['id']} --expires 30d` (or a date, or never)"
        return f"It expired at {key['expires_at']}: {extend} {to}."
    if not before["is_active"]:
        return "It is active again: its secret works from the very next request."
    return "It is active."


def _usable(key: KeyView) -> bool:
    return key["is_active"] and not _expired(key)


def _expired(key: KeyView) -> bool:
    expires = key["expires_at"]
    return expires is not None and datetime.fromisoformat(expires) <= datetime.now(UTC)


def _describe(k: KeyView) -> str:
    extra = f", expires {k['expires_at']}" if k["expires_at"] else ""
    return f"{k['id']} ({k['key_prefix']}…) of {k['user_id']} (tier {k['tier']}{extra})"


_HEADERS = ("ID", "PREFIX", "USER", "TIER", "ACTIVE", "EXPIRES", "LAST USED", "DESCRIPTION")


def _row(k: KeyView) -> list[object]:
    return [
        k["id"],
        k["key_prefix"],
        k["user_id"],
        k["tier"],
        k["is_active"],
        k["expires_at"],
        k["last_used_at"],
        k["description"],
    ]
