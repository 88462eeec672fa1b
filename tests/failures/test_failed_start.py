"""A gateway that cannot start leaves nothing behind: it claims its port and its admin
socket before it creates (or migrates) a database, so a second `llmgw serve` started
by mistake changes no file, and says why it stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from llmgw.fake_vllm import FakeVLLM

from ..conftest import CliRun, Served, config_file_env, run_llmgw


async def serve_once(*args: str) -> CliRun:
    """`llmgw serve` that is expected to stop by itself (bounded by `run_llmgw`)."""
    return await run_llmgw(*args, env=config_file_env())


def assert_refused(run: CliRun, *said: str) -> None:
    assert run.code == 1, (run.stdout, run.stderr)
    assert "Error: cannot start: " in run.stderr
    for words in said:
        assert words in run.stderr
    assert "Traceback" not in run.stderr


async def test_a_port_in_use_stops_start_up_before_the_database(
    tmp_path: Path, fake: FakeVLLM
) -> None:
    served = Served(tmp_path, fake.url)
    with socket.create_server(("127.0.0.1", served.port)):  # someone else listens there
        run = await serve_once("serve", "--config", str(served.config))
    assert_refused(run, str(served.port), "in use")
    assert not served.database.exists()
    assert not served.socket.exists()


async def test_a_live_admin_socket_stops_start_up_before_the_database(
    tmp_path: Path, served: Served, fake: FakeVLLM
) -> None:
    (tmp_path / "second").mkdir()
    second = Served(tmp_path / "second", fake.url)
    run = await serve_once("--socket", str(served.socket), "serve", "--config", str(second.config))
    assert_refused(run, f"another gateway is serving the admin socket {served.socket}")
    assert not second.database.exists()
    with socket.socket() as probe:  # its port was let go
        probe.bind(("127.0.0.1", second.port))
    # The first gateway is untouched: its socket still answers.
    status = await run_llmgw("--socket", str(served.socket), "status", "--json")
    assert status.code == 0, status.stderr
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health") as resp:
        assert resp.status == 200
