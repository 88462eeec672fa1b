"""`llmgw admin ...`: the admin users of the remote admin API, and logging in to it."""

from __future__ import annotations

import sys

import click

from .output import emit_json, emit_table, json_option, say
from .state import CliState, pass_state

password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)


def _password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("No password on standard input.")
        return password
    if not sys.stdin.isatty():
        raise click.UsageError("No terminal to ask for the password: use --password-stdin.")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
    return value


@click.group()
def admin() -> None:
    """Manage admin users of the remote admin API (/admin/api)."""


@admin.command("add")
@click.argument("username")
@click.option("--email", help="The admin's e-mail address.")
@password_stdin
@json_option
@pass_state
def add(
    state: CliState, username: str, email: str | None, password_stdin: bool, as_json: bool
) -> None:
    """Create an admin user (asks for the password)."""
    password = _password(password_stdin, confirm=True)
    created = state.call(lambda c: c.add_admin(username, password, email))
    if as_json:
        emit_json(created)
        return
    say(f"Created admin user {created['username']}.")


@admin.command("passwd")
@click.argument("username")
@password_stdin
@pass_state
def passwd(state: CliState, username: str, password_stdin: bool) -> None:
    """Set an admin user's password; their existing tokens stop working."""
    password = _password(password_stdin, confirm=True)
    state.call(lambda c: c.update_admin(username, password=password))
    say(f"Changed the password of {username}.")


@admin.command("disable")
@click.argument("username")
@pass_state
def disable(state: CliState, username: str) -> None:
    """Disable an admin user; their tokens are refused from the next request."""
    state.call(lambda c: c.update_admin(username, is_active=False))
    say(f"Disabled admin user {username}.")


@admin.command("enable")
@click.argument("username")
@pass_state
def enable(state: CliState, username: str) -> None:
    """Enable a disabled admin user again."""
    state.call(lambda c: c.update_admin(username, is_active=True))
    say(f"Enabled admin user {username}.")


@admin.command("list")
@json_option
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List admin users (never their passwords)."""
    admins = state.call(lambda c: c.list_admins())
    if as_json:
        emit_json(admins)
        return
    emit_table(
        [
            [a["username"], a["email"], a["is_active"], a["created_at"], a["last_login"]]
            for a in admins
        ],
        ("USERNAME", "EMAIL", "ACTIVE", "CREATED", "LAST LOGIN"),
    )


@admin.command("login")
@click.argument("username")
@password_stdin
@json_option
@pass_state
def login(state: CliState, username: str, password_stdin: bool, as_json: bool) -> None:
    """Log in to a remote gateway (--url) and print a token for --token / LLMGW_TOKEN."""
    if not state.url:
        raise click.UsageError("Log in to a remote gateway: give --url (or LLMGW_URL).")
    password = _password(password_stdin, confirm=False)
    answer = state.call(lambda c: c.login(username, password))
    if as_json:
        emit_json(answer)
        return
    click.echo(answer["access_token"])
    say(f"Token valid for {answer['expires_in']} s: export LLMGW_TOKEN=<the line above>.")
