"""`llmgw`: the admin's command line. One group per noun, each in its own module."""

from __future__ import annotations

import click

from .admin import admin
from .audit import audit
from .config import config
from .db import db
from .key import key
from .serve import serve
from .state import CliState
from .status import status
from .usage import usage
from .user import user

EXIT_CODES_HELP = "Exit status: 0 ok, 1 error, 2 usage error, 3 gateway not reachable."


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    envvar="LLMGW_ADMIN_SOCKET",
    type=click.Path(dir_okay=False),
    help="The gateway's admin socket (default: from the config, else the standard path).",
)
@click.option(
    "--config",
    envvar="LLMGW_CONFIG",
    type=click.Path(dir_okay=False),
    help="The llmgw.toml to read (default: ./llmgw.toml, then /etc/llmgw/llmgw.toml).",
)
@click.option(
    "--url",
    envvar="LLMGW_URL",
    help="Manage a remote gateway through its /admin/api (e.g. https://llmgw:8000).",
)
@click.option(
    "--token",
    envvar="LLMGW_TOKEN",
    help="Bearer token for --url, from `llmgw --url URL admin login USERNAME`.",
)
@click.version_option(package_name="llmgw")
@click.pass_context
def cli(
    ctx: click.Context,
    socket: str | None,
    config: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """llmgw: the company's LLM API gateway in front of vLLM."""
    ctx.obj = CliState(socket=socket, config=config, url=url, token=token)


for command in (key, user, usage, status, audit, admin, config, db, serve):
    cli.add_command(command)


def main() -> None:
    cli()
