"""An upstream reports usage that cannot be true, or a record reaches the database that
it cannot store: the ledger keeps writing everything else, the bad number never
reaches a user's totals, and what was set aside is counted where operators look."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.fake_vllm import FakeVLLM
from llmgw.ledger import Ledger, RecordError, UsageRecord
from llmgw.state import LEDGER

from ..conftest import Gateway, auth, post, read_rows, sse_events
from ..test_ledger import record as ledger_record
from .conftest import assert_settled

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say three words"}]}
URL = "/chat/completions"


async def chat(gateway: Gateway, key: str, **extra: Any) -> tuple[int, bytes]:
    status, _, raw = await post(
        gateway.base_url + URL, orjson.dumps({**CHAT, "max_tokens": 4, **extra}), auth(key)
    )
    return status, raw


@pytest.mark.parametrize(
    "reported",
    [
        {"prompt_tokens": 2**63},  # past SQLite's integers: stopped the ledger for good
        {"prompt_tokens": 2**62, "completion_tokens": 2**62},  # their sum overflows
        {"completion_tokens": -500},  # lowered the user's totals
        {"prompt_tokens": 10**9 + 1},
        {"prompt_tokens": 12.5},
        {"prompt_tokens": True},
        {"prompt_tokens": "12"},
    ],
    ids=["2^63", "sum-overflow", "negative", "over-bound", "float", "bool", "string"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_usage_that_cannot_be_true_is_marked_invalid_and_the_ledger_goes_on(
    gateway: Gateway, api_key: str, fake: FakeVLLM, reported: dict[str, Any], stream: bool
) -> None:
    fake.behaviour.reported_usage = reported
    status, raw = await chat(gateway, api_key, stream=stream)
    assert status == 200
    if stream:  # the client still gets the stream it asked for
        assert sse_events(raw)[-1] == "data: [DONE]"
    fake.behaviour.reported_usage = None
    for _ in range(3):  # legitimate requests after it are all written
        assert (await chat(gateway, api_key, stream=stream))[0] == 200
    rows = await assert_settled(gateway, rows=4)
    bad, *good = rows
    assert bad["usage_source"] == "invalid"
    # Estimated instead: the prompt from the request, a stream's tokens as they came.
    assert 0 < bad["prompt_tokens"] < 100
    assert bad["completion_tokens"] == (4 if stream else 0)
    assert [r["usage_source"] for r in good] == ["reported"] * 3
    assert all(r["completion_tokens"] == 4 for r in good)
    assert gateway.app[LEDGER].rejected == 0  # refused at the edge, never at the database


async def test_invalid_usage_is_logged_once_with_the_raw_value(
    gateway: Gateway, api_key: str, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.behaviour.reported_usage = {"prompt_tokens": -7}
    assert (await chat(gateway, api_key))[0] == 200
    await assert_settled(gateway, rows=1)
    lines = [r.getMessage() for r in caplog.records if "cannot be true" in r.getMessage()]
    assert len(lines) == 1
    assert '"prompt_tokens":-7' in lines[0]


def record(n: int, **changes: Any) -> UsageRecord:
    return dataclasses.replace(ledger_record(n), request_id=f"probe-{n}", **changes)


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_written(
    gateway: Gateway, api_key: str
) -> None:
    """Whatever slips past the edge (here: records put on the ledger directly), one
    record the database cannot store no longer poisons the batches behind it."""
    ledger = gateway.app[LEDGER]
    bad = [
        record(0, prompt_tokens=2**63),  # OverflowError binding it
        record(1, usage_source="bogus"),  # the CHECK refuses it
    ]
    for n in range(2, 40):  # in one batch with the bad ones, before and after them
        ledger.record(record(n))
        if n in (5, 30):
            ledger.record(bad.pop(0))
    assert (await chat(gateway, api_key))[0] == 200  # the gateway's own, after them
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/health") as resp:
        health = await resp.json()
    await gateway.flush_ledger()
    assert ledger.rejected == 2
    rows = read_rows(gateway.settings.database_path, "SELECT request_id FROM request_logs")
    assert sorted(r["request_id"] for r in rows if r["request_id"].startswith("probe-")) == sorted(
        f"probe-{n}" for n in range(2, 40)
    )
    assert len(rows) == 39
    # Each record is in the rollups exactly once: a refused part left nothing behind.
    [totals] = read_rows(
        gateway.settings.database_path, "SELECT sum(requests) AS n FROM usage_hourly"
    )
    assert totals["n"] == 39
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/health") as resp:
        health = await resp.json()
    assert health["status"] == "degraded"
    assert health["ledger"]["rejected"] == 2
    assert (ledger.pending, ledger.dropped) == (0, 0)
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        assert "llmgw_ledger_rejected_total 2" in await resp.text()


async def test_isolating_a_record_puts_the_unwritten_back_when_the_database_fails() -> None:
    """The database goes away while the writer is splitting a batch around a bad record:
    nothing written twice, nothing lost, the bad record set aside once."""
    written: list[str] = []
    calls = 0

    async def write(batch: list[UsageRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # mid-way through the split: the database is away once
            raise OSError("disk I/O error")
        if any(r.prompt_tokens < 0 for r in batch):
            raise RecordError("CHECK constraint failed")
        written.extend(r.request_id for r in batch)

    ledger = Ledger(write, flush_interval=0.001, retry_interval=0.001)
    for n in range(8):
        ledger.record(record(n, prompt_tokens=-1 if n == 6 else 1))
    await ledger.close(asyncio.create_task(ledger.run()))
    assert ledger.failed_writes == 1
    assert sorted(written) == sorted(f"probe-{n}" for n in range(8) if n != 6)
    assert len(written) == len(set(written)) == 7
    assert (ledger.rejected, ledger.pending, ledger.written) == (1, 0, 7)
