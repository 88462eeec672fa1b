"""`llmgw`: the admin's command line. One group per noun, each in its own module.

Exit status: 0 ok, 1 error, 2 usage error, 3 gateway not reachable.
"""

from __future__ import annotations

import click

from .key import key
from .serve import serve
from .state import CliState

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
@click.version_option(package_name="llmgw")
@click.pass_context
def cli(ctx: click.Context, socket: str | None, config: str | None) -> None:
    """llmgw: the company's LLM API gateway in front of vLLM."""
    ctx.obj = CliState(socket=socket, config=config)


cli.add_command(key)
cli.add_command(serve)


def main() -> None:
    cli()
