"""A soak: minutes of mixed traffic against `llmgw serve` (streams, plain answers, 429s,
clients that leave mid-stream, admin changes), sampling the gateway's memory and file
descriptors. They must be flat at the end, and the ledger must hold one row for every
request.

CI runs it for `--soak-seconds` (60 by default; it is marked `slow`); the full ten
minutes is `.venv/bin/pytest tests/failures/test_soak.py --soak-seconds 600 -s`, which
prints the curve (and writes it as CSV to `--soak-csv PATH`, when given).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.admin_client import AdminClient
from llmgw.fake_vllm import FakeVLLM

from ..conftest import Served, auth, read_rows

CLIENTS = 8
SAMPLES = 30  # points on the curve
# Growth allowed between the end of warm-up and the end: the allocator settling, not a leak
# (a leak of one small object per request would exceed it within the CI run).
RSS_SLACK_KB = 8 * 1024
SOAK_TIER = """
[tiers.soak]
requests_per_minute = 1000000
requests_per_hour = 10000000
"""


@dataclass
class Sample:
    at: float
    rss_kb: int
    fds: int
    requests: int


@dataclass
class Tally:
    sent: int = 0  # requests the gateway received (each must leave exactly one row)
    statuses: dict[int, int] = field(default_factory=dict)
    admin_changes: int = 0

    def saw(self, status: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def sample(pid: int, started: float, tally: Tally) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(time.monotonic() - started, rss, fds, tally.sent)


def chat(max_tokens: int, stream: bool = False) -> bytes:
    messages = [{"role": "user", "content": "tell me about the sea"}]
    body = {"model": "fake-model", "messages": messages, "max_tokens": max_tokens}
    return orjson.dumps(body | ({"stream": True} if stream else {}))


async def user(url: str, keys: dict[str, str], tally: Tally, end: float, seed: int) -> None:
    rng = random.Random(seed)
    chat_url = f"{url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            roll = rng.random()
            key = keys["limited"] if roll < 0.15 else keys["soak"]
            headers = auth(key) | {"Content-Type": "application/json"}
            if 0.15 <= roll < 0.3:  # a client that leaves mid-stream
                resp = await session.post(chat_url, data=chat(200, True), headers=headers)
                await resp.content.readany()
                resp.close()
                tally.saw(499)
                continue
            stream = roll >= 0.65
            body = chat(rng.randrange(1, 40), stream)
            async with session.post(chat_url, data=body, headers=headers) as resp:
                await resp.read()
                tally.saw(resp.status)


async def admin(socket: Path, tally: Tally, end: float) -> None:
    """Keys made, changed, rotated, revoked and deleted all the while."""
    async with AdminClient(socket) as admin_client:
        while time.monotonic() < end:
            key = await admin_client.create_key("churn", tier="standard")
            await admin_client.update_key(key["id"], {"tier": "premium", "description": "soak"})
            await admin_client.rotate_key(key["id"])
            await admin_client.revoke_key(key["id"])
            await admin_client.delete_key(key["id"])
            tally.admin_changes += 5
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_soak_memory_and_descriptors_stay_flat(
    tmp_path: Path, fake: FakeVLLM, pytestconfig: pytest.Config
) -> None:
    seconds: float = pytestconfig.getoption("soak_seconds")
    csv: Path | None = pytestconfig.getoption("soak_csv")
    fake.behaviour.token_delay = 0.002
    served = Served(tmp_path, fake.url, SOAK_TIER)
    await served.start()
    try:
        pid = served.process.pid
        async with AdminClient(served.socket) as admin_client:
            keys = {
                "soak": (await admin_client.create_key("soak", tier="soak"))["key"],
                "limited": (await admin_client.create_key("limited", tier="free"))["key"],
            }
        started = time.monotonic()
        tally = Tally()
        curve = [sample(pid, started, tally)]
        end = started + seconds
        traffic = [
            asyncio.create_task(user(served.url, keys, tally, end, seed)) for seed in range(CLIENTS)
        ]
        traffic.append(asyncio.create_task(admin(served.socket, tally, end)))
        while time.monotonic() < end:
            await asyncio.sleep(seconds / SAMPLES)
            curve.append(sample(pid, started, tally))
        await asyncio.gather(*traffic)
        # Idle upstream connections are closed by aiohttp's keep-alive sweep, which runs
        # every 4 s: within two sweeps the gateway holds what it held before the traffic.
        quiet = time.monotonic() + 10
        while time.monotonic() < quiet and sample(pid, started, tally).fds > curve[0].fds:
            await asyncio.sleep(0.5)
        final = sample(pid, started, tally)
        curve.append(final)
        report(curve, tally, csv)

        warm = next(s for s in curve if s.at >= seconds * 0.2)
        assert final.rss_kb <= warm.rss_kb + RSS_SLACK_KB, "memory grew"
        assert final.fds <= curve[0].fds, f"file descriptors leaked: {descriptors(pid)}"
        # Every kind of traffic happened, and every request left its row.
        assert {200, 429, 499} <= set(tally.statuses)
        assert tally.admin_changes > 0
        async with asyncio.timeout(10):
            while (rows := count_rows(served)) < tally.sent:
                await asyncio.sleep(0.1)
        assert rows == tally.sent
        served.process.terminate()
        async with asyncio.timeout(25):
            assert await served.process.wait() == 0
        assert "Traceback" not in served.log.read_text()
    finally:
        await served.stop()  # a failed soak leaves no gateway running


def descriptors(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    return sorted(os.readlink(fd_dir / name) for name in os.listdir(fd_dir))


def count_rows(served: Served) -> int:
    [row] = read_rows(served.database, "SELECT count(*) AS n FROM request_logs")
    return int(row["n"])


def report(curve: list[Sample], tally: Tally, csv: Path | None) -> None:
    lines = ["seconds,rss_kb,fds,requests"] + [
        f"{s.at:.0f},{s.rss_kb},{s.fds},{s.requests}" for s in curve
    ]
    if csv is not None:
        csv.write_text("\n".join(lines) + "\n")
    print(
        f"\nsoak: {tally.sent} requests {dict(sorted(tally.statuses.items()))}, "
        f"{tally.admin_changes} admin changes"
    )
    print("\n".join(lines))
