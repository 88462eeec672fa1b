"""`llmgw db ...`: back up the gateway's database while it serves; prune old usage rows;
copy a SQLite database into PostgreSQL (offline)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from pathlib import Path

import click

from llmgw.config import POSTGRES_SCHEMES
from llmgw.store import StoreError
from llmgw.store.copy import CopyReport, CountMismatch, copy_sqlite_to_postgres

from .output import emit_json, emit_table, json_option, say
from .state import CliState, pass_state


@click.group()
def db() -> None:
    """Back up, prune or copy the gateway's database."""


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


@db.command("copy")
@click.option(
    "--to",
    "url",
    required=True,
    metavar="URL",
    help="The empty PostgreSQL database to copy into (postgresql://user@host/db).",
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite database to copy (default: the configured one).",
)
@json_option
@pass_state
def copy(state: CliState, url: str, source: Path | None, as_json: bool) -> None:
    """Copy the SQLite database into an empty PostgreSQL database (gateway stopped).

    Every key (with its secret's hash and its id), admin user, audit row, ledger row and
    rollup goes over as it is, in one transaction; the rows of each table are then
    counted on both sides (exit 1 if they differ, nothing committed). Stop the gateway
    first: a database in use is refused. Then point [database] url at PostgreSQL and
    start the gateway again.
    """
    if not url.startswith(POSTGRES_SCHEMES):
        raise click.UsageError("--to takes a PostgreSQL URL: postgresql://user@host/db")
    if source is None:
        settings = state.settings()
        if settings.postgres_url:
            raise click.UsageError(
                "The configured database is PostgreSQL already: give the SQLite file "
                "with --from PATH."
            )
        source = settings.database_path
    try:
        report = asyncio.run(copy_sqlite_to_postgres(source, url))
    except CountMismatch as exc:
        _print_counts(exc.report, as_json)
        raise click.ClickException(str(exc)) from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    _print_counts(report, as_json)
    if not as_json:
        say(f"Copied {report.source} into the {report.target}; every table's rows counted.")


def _print_counts(report: CopyReport, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "source": report.source,
                "target": report.target,
                "tables": [
                    {"table": t.table, "source": t.source, "target": t.target}
                    for t in report.tables
                ],
            }
        )
        return
    emit_table(
        [(t.table, t.source, t.target, "ok" if t.equal else "DIFFERS") for t in report.tables],
        ["TABLE", "SQLITE", "POSTGRESQL", "CHECK"],
    )
