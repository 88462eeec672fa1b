"""`llmgw audit`: who changed what, through which door."""

from __future__ import annotations

import json

import click

from llmgw.api_types import AuditEntry

from .output import emit_json, emit_table, json_option
from .state import CliState, pass_state


@click.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="How many entries.",
)
@click.option("--action", help="Only actions starting with this (key., key.revoke, admin.).")
@json_option
@pass_state
def audit(state: CliState, limit: int, action: str | None, as_json: bool) -> None:
    """Show the audit log of admin changes, newest first."""
    entries = state.call(lambda c: c.audit(limit, action))
    if as_json:
        emit_json(entries)
        return
    emit_table(
        [
            [e["timestamp"], e["actor"], e["door"], e["action"], e["target"], _changes(e)]
            for e in entries
        ],
        ("TIME", "ACTOR", "DOOR", "ACTION", "TARGET", "CHANGES"),
    )


def _changes(entry: AuditEntry) -> str:
    before, after = entry["before"], entry["after"]
    if not before or not after:
        return "created" if after else "deleted" if before else ""
    changed = [name for name in after if before.get(name) != after[name] and name != "updated_at"]
    shown = (f"{name}: {_value(before.get(name))} -> {_value(after[name])}" for name in changed)
    return ", ".join(shown) or "no change"


def _value(value: object) -> str:
    """A value as --json spells it (true, null, "text", ["a", "b"]), whatever its
    type: "null" the text and null the value look different, and a control character
    someone put in a description stays escaped instead of reaching the terminal."""
    return json.dumps(value, ensure_ascii=False)
