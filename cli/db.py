"""`llmgw db ...`: back up the gateway's database while it serves; prune old usage rows."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import click

from .output import emit_json, json_option, say
from .state import CliState, pass_state


@click.group()
def db() -> None:
    """Back up or prune the gateway's database."""


@db.command("backup")
@click.argument(
    "path", type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path)
)
@json_option
@pass_state
def backup(state: CliState, path: Path, as_json: bool) -> None:
    """Write an online backup of the database to PATH (the gateway keeps serving).

    PATH `-` writes it to stdout instead, e.g. `ssh gw llmgw db backup - > llmgw.db`.
    """
    if str(path) == "-":
        _backup_to_stdout(state, as_json)
        return
    if not path.parent.is_dir():
        raise click.ClickException(
            f"There is no directory {path.parent}: create it first, or give another PATH."
        )
    partial = path.with_name(path.name + ".partial")
    try:
        _create_private(partial)
        # The gateway checked the copy's integrity before sending it; the client checks
        # that all of it arrived (its Content-Length).
        size = state.call(lambda c: c.backup(partial))
        partial.replace(path)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot write {path}: {exc.strerror}. Give a PATH you can write to."
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    if as_json:
        emit_json({"path": str(path), "bytes": size})
        return
    say(f"Backed up the database to {path} ({size} bytes, integrity checked).")


def _create_private(path: Path) -> None:
    """The copy holds admin password hashes: mode 0600, whatever the umask (the client
    then writes into this file, and the rename keeps its mode)."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _backup_to_stdout(state: CliState, as_json: bool) -> None:
    """The backup as the whole of stdout (the gateway checked its integrity before
    sending it; the client that all of it arrived)."""
    if as_json:
        raise click.UsageError("--json and PATH - both want stdout: give one of them.")
    if sys.stdout.isatty():
        raise click.UsageError(
            "Not writing a database to a terminal: redirect stdout (`- > llmgw.db`), "
            "or give a PATH."
        )
    with tempfile.TemporaryDirectory(prefix="llmgw-backup-") as workdir:
        copy = Path(workdir) / "llmgw.db"  # the directory is the user's alone (mode 0700)
        size = state.call(lambda c: c.backup(copy))
        stdout = sys.stdout.buffer
        with copy.open("rb") as file:
            while chunk := file.read(1024 * 1024):
                stdout.write(chunk)
    say(f"Backed up the database to stdout ({size} bytes, integrity checked).")


def days(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A number of days: `90d` or `90`."""
    match = re.fullmatch(r"\s*(\d+)\s*d?\s*", value)
    if not match or int(match[1]) < 1:
        raise click.BadParameter(f"{value!r} is not a number of days such as 90d")
    return int(match[1])


@db.command("prune")
@click.option(
    "--older-than",
    "older_than",
    callback=days,
    required=True,
    metavar="DAYS",
    help="Delete usage rows older than this, e.g. 90d.",
)
@json_option
@pass_state
def prune(state: CliState, older_than: int, as_json: bool) -> None:
    """Delete request_logs rows older than --older-than (the seed's log retention)."""
    result = state.call(lambda c: c.prune(older_than))
    if as_json:
        emit_json(result)
        return
    say(f"Deleted {result['deleted']} usage rows older than {result['before']}.")
