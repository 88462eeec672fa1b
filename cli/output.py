"""Printing: data to stdout (a table for people, `--json` for programs), talk to stderr."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import orjson

# Every command that prints data takes --json (stdout is then one JSON document).
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def emit_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), max((len(r[i]) for r in cells), default=0)) for i, h in enumerate(headers)
    ]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def say(message: str) -> None:
    click.echo(message, err=True)


def cell(value: Any) -> str:
    """One value as a person reads it in a table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)
