"""`llmgw serve`: run the gateway in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal

import click
from aiohttp import web

from llmgw.admin_client import AdminClient
from llmgw.admin_socket import AdminSocketError
from llmgw.config import ConfigError, Settings, UpstreamSettings, find_config_file, load_settings
from llmgw.fake_vllm import FakeVLLM, FakeVLLMBehaviour
from llmgw.logs import configure_logging
from llmgw.server import public_url, run_gateway
from llmgw.store import StoreError

from .state import CliState, pass_state

DEMO_MODEL = "fake-model"


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="The llmgw.toml to read (overrides the global --config and LLMGW_CONFIG).",
)
@click.option("--host", help="Listen on this address (overrides [server] host).")
@click.option("--port", type=int, help="Listen on this port (overrides [server] port).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.option(
    "--demo",
    is_flag=True,
    help="Also run a built-in fake vLLM and a throwaway database, and print a key to try.",
)
@pass_state
def serve(
    state: CliState,
    config: str | None,
    host: str | None,
    port: int | None,
    log_format: Literal["text", "json"] | None,
    demo: bool,
) -> None:
    """Run the gateway until SIGTERM or Ctrl-C."""
    # Everything the gateway creates (database, -wal, -shm, log, backups' temporaries)
    # holds password hashes, usage or both: the gateway user's alone, whatever umask
    # the shell or the container runtime passed on (usually 0022: readable by all).
    # systemd sets no stricter one either. The store and the log also create their
    # files with explicit modes, for embedders; this covers whatever else is made.
    os.umask(0o077)
    try:
        settings = load_settings(find_config_file(config or state.config, os.environ))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    server = settings.server
    if demo and host is None:
        # The demo prints a working key: not for the network unless --host says so.
        host = "127.0.0.1"
    settings = dataclasses.replace(
        settings,
        server=dataclasses.replace(
            server, host=host or server.host, port=server.port if port is None else port
        ),
        logging=dataclasses.replace(settings.logging, format=log_format or settings.logging.format),
    )
    if state.socket:
        settings = dataclasses.replace(
            settings, admin=dataclasses.replace(settings.admin, socket=state.socket)
        )
    configure_logging(settings.logging)
    try:
        _run(_demo(settings) if demo else run_gateway(settings))
    except (AdminSocketError, ConfigError, OSError, StoreError, RuntimeError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio is only slower
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _demo(settings: Settings) -> None:
    fake = FakeVLLM(FakeVLLMBehaviour(models=[DEMO_MODEL], token_delay=0.02))
    await fake.start()
    workdir = tempfile.mkdtemp(prefix="llmgw-demo-")
    settings = dataclasses.replace(
        settings,
        upstreams=(UpstreamSettings(fake.url),),
        database=dataclasses.replace(settings.database, path=f"{workdir}/llmgw.db"),
    )

    async def announce(runner: web.AppRunner) -> None:
        async with AdminClient(settings.socket_path) as admin:
            created = await admin.create_key(
                "demo", tier="premium", description="llmgw serve --demo"
            )
        _print_demo(public_url(runner), created["key"], settings)

    try:
        await run_gateway(settings, announce)
    finally:
        await fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _llmgw_command() -> str:
    """How to run this llmgw from a shell: `llmgw` if that is it on PATH, else its full
    path (the README's install puts it in .venv/bin, which is not on PATH)."""
    this = Path(sys.argv[0]).resolve()
    found = shutil.which("llmgw")
    return "llmgw" if found and Path(found).resolve() == this else shlex.quote(str(this))


def _print_demo(url: str, key: str, settings: Settings) -> None:
    click.echo(
        f"""
llmgw demo: the gateway is in front of a built-in fake vLLM serving "{DEMO_MODEL}".
  base URL   {url}/v1
  API key    {key}
  database   {settings.database_path} (deleted on exit)

Try it:
  curl {url}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{DEMO_MODEL}", "max_tokens": 8,
         "messages": [{{"role": "user", "content": "Hi"}}]}}'

  or the OpenAI SDK: OpenAI(base_url="{url}/v1", api_key="{key}")

Admin: {_llmgw_command()} --socket {settings.socket_path} key list
Stop:  Ctrl-C
""",
    )
