"""What every command shares: finding the gateway, calling it, and saying what failed."""

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


class GatewayNotReachable(click.ClickException):
    """Exit status 3: scripts can tell "gateway down" from "request refused"."""

    exit_code = 3


@dataclass(slots=True)
class CliState:
    socket: str | None
    config: str | None

    def settings(self) -> Settings:
        try:
            return load_settings(find_config_file(self.config, os.environ))
        except ConfigError as exc:
            raise click.ClickException(f"{exc} (fix the setting, or pass --config)") from None

    def socket_path(self) -> Path:
        return Path(self.socket) if self.socket else self.settings().socket_path

    def call(self, action: Callable[[AdminClient], Awaitable[T]]) -> T:
        """Run `action` against the gateway, turning its failures into CLI errors."""

        async def run() -> T:
            async with AdminClient(self.socket_path()) as client:
                return await action(client)

        try:
            return asyncio.run(run())
        except GatewayUnreachable as exc:
            raise GatewayNotReachable(str(exc)) from None
        except AdminApiError as exc:
            raise click.ClickException(exc.message) from None


pass_state = click.make_pass_decorator(CliState)
