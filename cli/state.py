"""What every command shares: finding the gateway, calling it, and saying what failed.

Exit status: 0 ok, 1 error, 2 usage error (a bad option, or a value the gateway
refused), 3 gateway not reachable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from llmgw.admin_client import AdminApiError, AdminClient, GatewayUnreachable
from llmgw.config import ConfigError, Settings, find_config_file, load_settings

T = TypeVar("T")

# The option that sets each admin API field, to name it when the gateway refuses it.
OPTION_FOR_FIELD = {
    "user_id": "--user",
    "tier": "--tier",
    "description": "--description",
    "expires_at": "--expires",
    "allowed_models": "--model",
    "requests_per_minute": "--rpm",
    "requests_per_hour": "--rph",
    "tokens_per_minute": "--tokens-per-minute",
    "tokens_per_day": "--tokens-per-day",
    "max_in_flight": "--max-in-flight",
    "budget_tokens": "--budget-tokens",
    "budget_period": "--budget-period",
    "is_active": "--enable/--disable",
    "username": "USERNAME",
    "password": "The password",
    "email": "--email",
    "older_than_days": "--older-than",
    "days": "--days",
    "by": "--by",
    "limit": "--limit",
    "action": "--action",
}
# What the API's words for a field's values are on the command line: its null is
# `--expires never` or `--rpm tier`, and its list of models is one --model each.
CLI_WORDS = {
    "expires_at": ("or null", "or never"),
    "requests_per_minute": ("or null", "or tier"),
    "requests_per_hour": ("or null", "or tier"),
    "tokens_per_minute": ("or null", "or tier"),
    "tokens_per_day": ("or null", "or tier"),
    "max_in_flight": ("or null", "or tier"),
    "budget_tokens": ("or null", "or tier"),
    "budget_period": ("or null", "or tier"),
    "allowed_models": ("a list of model names, or null for all", "a model name"),
}


class GatewayNotReachable(click.ClickException):
    """Exit status 3: scripts can tell "gateway down" from "request refused"."""

    exit_code = 3


@dataclass(slots=True)
class CliState:
    socket: str | None
    config: str | None
    url: str | None = None
    token: str | None = None

    def settings(self) -> Settings:
        try:
            return load_settings(find_config_file(self.config, os.environ))
        except ConfigError as exc:
            raise click.ClickException(f"{exc} (fix the setting, or pass --config)") from None

    def socket_path(self) -> Path:
        return Path(self.socket) if self.socket else self.settings().socket_path

    def client(self) -> AdminClient:
        """The remote gateway at --url when given, else the local admin socket."""
        if self.url:
            return AdminClient(url=self.url, token=self.token)
        return AdminClient(self.socket_path())

    def call(self, action: Callable[[AdminClient], Awaitable[T]]) -> T:
        """Run `action` against the gateway, turning its failures into CLI errors."""

        async def run() -> T:
            async with self.client() as client:
                return await action(client)

        try:
            return asyncio.run(run())
        except GatewayUnreachable as exc:
            raise GatewayNotReachable(str(exc)) from None
        except AdminApiError as exc:
            if exc.status == 400 and exc.param:
                raise click.UsageError(in_cli_words(exc.message, exc.param)) from None
            raise click.ClickException(exc.message) from None


pass_state = click.make_pass_decorator(CliState)


def in_cli_words(message: str, field: str) -> str:
    """The gateway's refusal of `field` as the command line says it: `'expires_at' must
    be a future date, or null` becomes `--expires must be a future date, or never`."""
    option = OPTION_FOR_FIELD.get(field)
    if option is None:
        return message
    api, cli = CLI_WORDS.get(field, ("", ""))
    if api:
        message = message.replace(api, cli)
    return message.replace(f"'{field}'", option)
