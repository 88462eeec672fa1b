"""`llmgw key ...`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Any

import click

from .output import emit_json, emit_table, say
from .state import CliState, pass_state

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group()
def key() -> None:
    """Manage API keys."""


@key.command("add")
@click.option("--user", "user_id", required=True, help="Who the key is for (user or team id).")
@click.option("--tier", help="Rate-limit tier (default: [admin] default_tier).")
@click.option("--description", help="What the key is for.")
@click.option("--expires", help="Expiry: 2027-01-31, an ISO datetime, or 30d / 12h / 2w.")
@click.option("--model", "models", multiple=True, help="Allow only this model (repeatable).")
@json_option
@pass_state
def add(
    state: CliState,
    user_id: str,
    tier: str | None,
    description: str | None,
    expires: str | None,
    models: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a key and print it (shown this once only)."""
    created = state.call(
        lambda c: c.create_key(
            user_id,
            tier=tier,
            description=description,
            expires_at=expires,
            allowed_models=list(models) or None,
        )
    )
    if as_json:
        emit_json(created)
        return
    click.echo(created["key"])
    say(
        f"Created key {created['id']} for {created['user_id']} (tier {created['tier']}"
        + (f", expires {created['expires_at']}" if created["expires_at"] else "")
        + "). Store it now: it will not be shown again."
    )


@key.command("list")
@json_option
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List all keys (never their secrets)."""
    keys = state.call(lambda c: c.list_keys())
    if as_json:
        emit_json(keys)
        return
    emit_table([_row(k) for k in keys], _HEADERS)


@key.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_state
def revoke(state: CliState, key_id: int, as_json: bool) -> None:
    """Revoke a key: refused from the very next request."""
    revoked = state.call(lambda c: c.revoke_key(key_id))
    if as_json:
        emit_json(revoked)
        return
    say(f"Revoked key {revoked['id']} ({revoked['key_prefix']}…) of {revoked['user_id']}.")


_HEADERS = ("ID", "PREFIX", "USER", "TIER", "ACTIVE", "EXPIRES", "LAST USED", "DESCRIPTION")


def _row(k: dict[str, Any]) -> list[Any]:
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
