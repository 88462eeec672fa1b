"""`llmgw config init|check`: write a commented llmgw.toml, or show what one amounts to.

Neither talks to the gateway, so exit status 3 never applies: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
from pathlib import Path

import click

from llmgw.config import (
    CONFIG_SEARCH_PATH,
    ConfigError,
    Settings,
    find_config_file,
    load_settings,
)
from llmgw.config_file import masked, render_config, settings_dict

from .output import emit_json, json_option, say
from .state import CliState, pass_state


@click.group()
def config() -> None:
    """Write or check a configuration file."""


@config.command("init")
@click.argument(
    "path",
    default="llmgw.toml",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option("--force", is_flag=True, help="Replace PATH if it already exists.")
@click.option(
    "--secret",
    is_flag=True,
    help="Fill [admin] secret_key with a fresh random value (for the remote admin API).",
)
def init(path: Path, force: bool, secret: bool) -> None:
    """Write a commented llmgw.toml with every default.

    PATH defaults to ./llmgw.toml; `-` prints to stdout instead. The file is created
    with mode 0600, since it may hold secrets.
    """
    settings = Settings()
    if secret:
        admin = dataclasses.replace(settings.admin, secret_key=secrets.token_urlsafe(32))
        settings = dataclasses.replace(settings, admin=admin)
    text = render_config(settings)
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    _write_private(path, text, force=force)
    say(f"Wrote {path} (mode 0600: only you can read it, since it may hold secrets).")
    if secret:
        say("[admin] secret_key holds a fresh random secret; it is in the file only.")
    if path.resolve() in {p.resolve() for p in CONFIG_SEARCH_PATH}:
        say("Next: set [[upstreams]] url to your vLLM server, then run `llmgw config check`.")
        return
    quoted = shlex.quote(str(path))
    say(f"Next: set [[upstreams]] url to your vLLM server, then run `llmgw config check {quoted}`.")
    say(f"The gateway reads it with `llmgw --config {quoted} serve` (or LLMGW_CONFIG={quoted}).")


@config.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@json_option
@pass_state
def check(state: CliState, path: str | None, as_json: bool) -> None:
    """Validate the config and print the effective settings.

    Reads what `llmgw serve` reads: PATH, else the global --config or LLMGW_CONFIG,
    else ./llmgw.toml or /etc/llmgw/llmgw.toml, with the environment's overrides on
    top. Secrets that are set are shown as "***".
    """
    try:
        found = find_config_file(path or state.config, os.environ)
        settings = load_settings(found)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if state.socket:  # `llmgw --socket PATH serve` listens there, whatever the file says
        admin = dataclasses.replace(settings.admin, socket=state.socket)
        settings = dataclasses.replace(settings, admin=admin)
    settings, defaults = _effective_paths(settings)
    shown = masked(settings)
    if as_json:
        emit_json(settings_dict(shown))
    else:
        notes = dict.fromkeys(defaults, "the default for this user")
        click.echo(render_config(shown, comments=False, notes=notes), nl=False)
    source = f"Read {found}" if found else "No config file; defaults and environment only"
    say(f"{source}. The settings are valid.")


def _effective_paths(settings: Settings) -> tuple[Settings, list[str]]:
    """`settings` with the socket and database paths the gateway will use in place of
    "" (the default, which depends on the user and XDG_*), and which ones were ""."""
    defaults = []
    admin, database = settings.admin, settings.database
    if not admin.socket:
        admin = dataclasses.replace(admin, socket=str(settings.socket_path))
        defaults.append("admin.socket")
    if not database.path:
        database = dataclasses.replace(database, path=str(settings.database_path))
        defaults.append("database.path")
    return dataclasses.replace(settings, admin=admin, database=database), defaults


def _write_private(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path`, readable by its owner only: the file may hold secret_key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"Cannot create {path.parent}: {exc.strerror}.") from None
    # O_EXCL makes "refuse to overwrite" hold even if the file appears after a check.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(
            f"{path} already exists; pass --force to replace it, or give another PATH."
        ) from None
    except OSError as exc:
        raise click.ClickException(f"Cannot write {path}: {exc.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            # os.open's mode applies only to a new file, not to one --force replaces.
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
    except OSError as exc:
        raise click.ClickException(f"Cannot write {path}: {exc.strerror}.") from None
