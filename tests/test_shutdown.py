"""`llmgw serve` in a subprocess: a signal drains live streams and loses no ledger row."""

from __future__ import annotations

import asyncio
import json
import signal
import socket

import aiohttp
import orjson
import pytest

from llmgw.fake_vllm import FakeVLLM

from .conftest import LLMGW, Served, read_rows


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
        # Load balancer health checks, each on a new connection, learn it is leaving: for
        # the drain delay (0.5 s here) every one gets an answer, 503...
        statuses: list[int] = []
        async with asyncio.timeout(5):
            while len(statuses) < 6 or statuses[-6] != 503:
                async with (
                    aiohttp.ClientSession() as probe,
                    probe.get(f"{served.url}/health") as resp,
                ):
                    statuses.append(resp.status)
                    assert resp.status == 200 or (await resp.json())["draining"] is True
                await asyncio.sleep(0.05)
        assert set(statuses[statuses.index(503) :]) == {503}
        # ...and it stops accepting new connections while the stream goes on.
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
