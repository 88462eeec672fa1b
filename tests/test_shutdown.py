"""`llmgw serve` in a subprocess: a signal drains live streams and loses no ledger row."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.fake_vllm import FakeVLLM

from .conftest import LLMGW, read_rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    def __init__(self, process: asyncio.subprocess.Process, port: int, root: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.socket = root / "admin.sock"
        self.database = root / "llmgw.db"
        self.log = root / "gateway.log"


@pytest.fixture
async def served(tmp_path: Path, fake: FakeVLLM) -> AsyncIterator[Served]:
    port = free_port()
    config = tmp_path / "llmgw.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_period = 20

[admin]
socket = "{tmp_path / "admin.sock"}"

[database]
path = "{tmp_path / "llmgw.db"}"

[[upstreams]]
url = "{fake.url}"
"""
    )
    log = (tmp_path / "gateway.log").open("wb")
    # The config file alone decides: no LLMGW_* override from the test environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
    process = await asyncio.create_subprocess_exec(
        LLMGW, "serve", "--config", str(config), stdout=log, stderr=log, env=env
    )
    served = Served(process, port, tmp_path)
    async with asyncio.timeout(15), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{served.url}/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    yield served
    if process.returncode is None:
        process.kill()
        await process.wait()
    log.close()


async def add_key(served: Served) -> str:
    cli = await asyncio.create_subprocess_exec(
        LLMGW,
        "--socket",
        str(served.socket),
        "key",
        "add",
        "--user",
        "sam",
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    key: str = json.loads(out)["key"]
    return key


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_streams_and_flushes_every_row(
    served: Served, fake: FakeVLLM, signum: signal.Signals
) -> None:
    key = await add_key(served)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(
                f"{served.url}/v1/chat/completions",
                data=orjson.dumps({**chat, "max_tokens": 2}),
                headers=headers,
            ) as resp:
                assert resp.status == 200
        fake.behaviour.token_delay = 0.05
        stream = await session.post(
            f"{served.url}/v1/chat/completions",
            data=orjson.dumps({**chat, "max_tokens": 30, "stream": True}),
            headers=headers,
        )
        first = await stream.content.readany()
        assert b'"role":"assistant"' in first

        served.process.send_signal(signum)
        # It stops accepting new connections while the stream goes on.
        async with asyncio.timeout(5):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", int(served.url.rsplit(":", 1)[1]))):
                        pass
                except ConnectionRefusedError:
                    break
                await asyncio.sleep(0.02)
        rest = await stream.read()
        assert (first + rest).endswith(b"data: [DONE]\n\n")
        assert (first + rest).count(b'"content":" tok') == 30

    async with asyncio.timeout(15):
        assert await served.process.wait() == 0
    assert not served.socket.exists()
    rows = read_rows(served.database, "SELECT * FROM request_logs ORDER BY id")
    assert [r["status_code"] for r in rows] == [200] * 6
    assert rows[-1]["completion_tokens"] == 30
    assert rows[-1]["usage_source"] == "reported"
    log = served.log.read_text()
    assert "Traceback" not in log
    assert key not in log
