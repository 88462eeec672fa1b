"""The ledger writer alone: batching, surviving a failing database, bounded buffer."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from llmgw.ledger import Ledger, UsageRecord


def record(n: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"r{n}",
        user_id="u",
        api_key_id=1,
        endpoint="/v1/chat/completions",
        method="POST",
        status_code=200,
        duration_ms=1.0,
        ttft_ms=0.5,
        prompt_tokens=1,
        completion_tokens=1,
        usage_source="reported",
        model="m",
        upstream="http://u",
        timestamp=0.0,
    )


class Database:
    """Stands in for the store's insert: records batches, fails while told to."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.failing = False

    async def write(self, records: list[UsageRecord]) -> None:
        await asyncio.sleep(0)
        if self.failing:
            raise sqlite3.OperationalError("database is locked")
        self.batches.append([r.request_id for r in records])


async def test_records_gathered_in_one_interval_are_one_batch() -> None:
    db = Database()
    ledger = Ledger(db.write, flush_interval=0.05, batch_size=100)
    task = asyncio.create_task(ledger.run())
    for n in range(10):
        ledger.record(record(n))
    await ledger.close(task)
    assert db.batches == [[f"r{n}" for n in range(10)]]
    assert ledger.written == 10
    assert ledger.pending == 0


async def test_batches_are_capped_at_batch_size() -> None:
    db = Database()
    ledger = Ledger(db.write, flush_interval=10, batch_size=4)
    task = asyncio.create_task(ledger.run())
    for n in range(10):
        ledger.record(record(n))
    await ledger.close(task)
    assert [len(b) for b in db.batches] == [4, 4, 2]


async def test_rows_wait_while_the_database_fails_and_are_written_in_order_later() -> None:
    db = Database()
    db.failing = True
    ledger = Ledger(db.write, flush_interval=0.01, retry_interval=0.01)
    task = asyncio.create_task(ledger.run())
    for n in range(5):
        ledger.record(record(n))
    async with asyncio.timeout(5):
        while ledger.failed_writes < 3:
            await asyncio.sleep(0.005)
    assert (ledger.pending, ledger.last_error) == (5, "OperationalError: database is locked")
    ledger.record(record(5))
    db.failing = False
    async with asyncio.timeout(5):
        while ledger.pending:
            await asyncio.sleep(0.005)
    assert [r for b in db.batches for r in b] == [f"r{n}" for n in range(6)]
    assert ledger.last_error is None
    await ledger.close(task)


async def test_a_full_buffer_counts_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    db = Database()
    ledger = Ledger(db.write, max_pending=3)
    for n in range(5):
        ledger.record(record(n))
    assert ledger.pending == 3
    assert ledger.dropped == 2
    assert "ledger buffer full" in caplog.text
    task = asyncio.create_task(ledger.run())
    await ledger.close(task)
    assert db.batches == [["r0", "r1", "r2"]]


async def test_close_gives_up_on_a_dead_database_and_says_how_many_rows_were_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Database()
    db.failing = True
    ledger = Ledger(db.write, retry_interval=0.001)
    task = asyncio.create_task(ledger.run())
    ledger.record(record(1))
    ledger.record(record(2))
    await asyncio.wait_for(ledger.close(task, attempts=3), 5)
    assert ledger.dropped == 2
    assert "shutting down with 2 usage records unwritten" in caplog.text
