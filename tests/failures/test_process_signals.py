"""`llmgw serve` stopped under load: SIGTERM drains it cleanly; SIGKILL loses at most the
usage records of one ledger flush interval, and the database comes back intact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Served, auth, read_rows, run_llmgw

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
STREAMS, STREAM_TOKENS = 16, 40
WORKERS = 4
FLUSH_INTERVAL = 0.25  # the default
LOAD_TIER = """
[tiers.load]
requests_per_minute = 1000000
requests_per_hour = 10000000
"""


@dataclass
class Load:
    """What the clients saw: each answered request's id and when its answer ended."""

    answered: dict[str, float] = field(default_factory=dict)
    refused: int = 0  # could not connect, or the connection was dropped before an answer


async def serve_with_key(tmp_path: Path, fake: FakeVLLM) -> tuple[Served, str]:
    """`llmgw serve` with a key of a tier that never refuses, made with the CLI."""
    served = Served(tmp_path, fake.url, LOAD_TIER)
    await served.start()
    created = await run_llmgw(
        "--socket", str(served.socket), "key", "add", "--user", "load", "--tier", "load", "--json"
    )
    assert created.code == 0, created.stderr
    key: str = json.loads(created.stdout)["key"]
    return served, key


async def hammer(url: str, key: str, load: Load, stop: asyncio.Event) -> None:
    """Non-streaming requests one after another until the gateway is gone (bounded)."""
    headers = json_headers(key)
    body = orjson.dumps({**CHAT, "max_tokens": 2})
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200
                    load.answered[resp.headers["x-request-id"]] = time.monotonic()
            except aiohttp.ClientConnectionError:
                load.refused += 1
                await asyncio.sleep(0.01)


def json_headers(key: str) -> dict[str, str]:
    return auth(key) | {"Content-Type": "application/json"}


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def request_ids(database: Path) -> set[str]:
    return {r["request_id"] for r in read_rows(database, "SELECT request_id FROM request_logs")}


async def test_sigterm_under_load_drains_streams_and_writes_every_row(
    tmp_path: Path, fake: FakeVLLM
) -> None:
    served, key = await serve_with_key(tmp_path, fake)
    url = f"{served.url}/v1/chat/completions"
    fake.behaviour.token_delay = 0.03  # each stream takes about 1.2 s
    load, stop = Load(), asyncio.Event()
    workers = [asyncio.create_task(hammer(url, key, load, stop)) for _ in range(WORKERS)]
    session = aiohttp.ClientSession()
    try:
        body = orjson.dumps({**CHAT, "max_tokens": STREAM_TOKENS, "stream": True})
        streams = [
            await session.post(
                url, data=body, headers=auth(key) | {"Content-Type": "application/json"}
            )
            for _ in range(STREAMS)
        ]
        firsts = [await s.content.readany() for s in streams]
        assert all(b'"role":"assistant"' in f for f in firsts)

        served.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):  # the listening socket closes at once
            while not refuses_connections(served.port):
                await asyncio.sleep(0.02)
        stop.set()
        rests = await asyncio.gather(*(s.read() for s in streams))
    finally:
        await session.close()
        stop.set()
        await asyncio.gather(*workers)

    for first, rest in zip(firsts, rests, strict=True):
        assert (first + rest).endswith(b"data: [DONE]\n\n")
        assert (first + rest).count(b'"content":" tok') == STREAM_TOKENS
    async with asyncio.timeout(25):
        assert await served.process.wait() == 0
    assert not served.socket.exists()
    log = served.log.read_text()
    assert "Traceback" not in log
    written = int(re.findall(r"ledger flushed: (\d+) records written, 0 dropped", log)[-1])
    rows = read_rows(served.database, "SELECT request_id, status_code FROM request_logs")
    # Every answer a client received has its row, and every row the gateway counted
    # is in the database.
    assert len(rows) == written
    assert request_ids(served.database) >= set(load.answered)
    assert len(rows) == STREAMS + len(load.answered)
    assert {r["status_code"] for r in rows} == {200}


async def test_sigkill_under_load_loses_at_most_one_flush_interval(
    tmp_path: Path, fake: FakeVLLM
) -> None:
    served, key = await serve_with_key(tmp_path, fake)
    url = f"{served.url}/v1/chat/completions"
    load, stop = Load(), asyncio.Event()
    workers = [asyncio.create_task(hammer(url, key, load, stop)) for _ in range(WORKERS)]
    try:
        await asyncio.sleep(3)  # load across a dozen flushes
        assert len(load.answered) > 100
        served.process.kill()  # SIGKILL
        killed = time.monotonic()
        await served.process.wait()
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert read_rows(served.database, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    written = request_ids(served.database)
    lost = {rid: at for rid, at in load.answered.items() if rid not in written}
    # Only records queued since the last commit can be lost: those of the last flush
    # interval (and of the commit that was under way, a few milliseconds).
    window = [at for at in load.answered.values() if at >= killed - FLUSH_INTERVAL - 0.1]
    assert all(at >= killed - FLUSH_INTERVAL - 0.1 for at in lost.values())
    assert len(lost) <= len(window)
    print(
        f"\nSIGKILL after {len(load.answered)} answered requests: {len(lost)} rows lost; "
        f"{len(window)} answered in the last {FLUSH_INTERVAL + 0.1:g} s"
    )

    await served.start()  # on the same database and socket path: a stale socket is reclaimed
    assert read_rows(served.database, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url,
            data=orjson.dumps({**CHAT, "max_tokens": 2}),
            headers=json_headers(key),
        ) as resp,
    ):
        assert resp.status == 200
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(25):
        assert await served.process.wait() == 0
    with contextlib.suppress(FileNotFoundError):
        assert not served.socket.exists()
