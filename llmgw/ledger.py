"""The usage ledger: one record per authenticated request, written in batches.

The request path only appends to an in-memory buffer and never waits on SQLite. One
writer task takes what has gathered (at most every `flush_interval`, or at once when a
batch is full) and hands it to the store in one transaction. When the database fails,
the batch goes back to the front of the buffer and is retried; the buffer is bounded,
and a record that does not fit is counted and logged, never dropped silently. A record
the database refuses for what it holds (`RecordError`: a number out of range, a broken
constraint) would fail every retry and hold up everything behind it: the batch is split
until that record stands alone, the rest is written, and the record is set aside,
logged whole and counted (`rejected`, in `/health`). Closing writes everything still
buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from .api_types import LedgerStatus

log = logging.getLogger("llmgw.ledger")

# `invalid`: the upstream reported a count that cannot be true; the row is estimated.
UsageSource = Literal["reported", "estimated", "partial", "invalid"]


@dataclass(slots=True)
class UsageRecord:
    """One row of `request_logs`."""

    request_id: str
    user_id: str
    api_key_id: int | None
    endpoint: str
    method: str
    status_code: int
    duration_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    usage_source: UsageSource
    model: str | None
    upstream: str | None
    timestamp: float  # epoch seconds at the start of the request


Writer = Callable[[list[UsageRecord]], Awaitable[object]]


class RecordError(Exception):
    """Raised by a writer when the records themselves cannot be written (a value out of
    range, a broken constraint): writing the same batch again can never succeed."""


class Ledger:
    def __init__(
        self,
        write: Writer,
        *,
        flush_interval: float = 0.25,
        batch_size: int = 1000,
        max_pending: int = 100_000,
        retry_interval: float = 1.0,
    ) -> None:
        self._write = write
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._retry_interval = retry_interval
        self._pending: deque[UsageRecord] = deque()
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        self._close_attempts = 5
        self._writing = 0
        # Records queued, and records done with (written, set aside or dropped at
        # shutdown), since start: records are written in the order they were queued, so
        # every record queued before the `_queued`-th is done once `_done` reaches it.
        self._queued = 0
        self._done = 0
        self._progress = asyncio.Event()
        self._last_drop_log = 0.0
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self.failed_writes = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        """Records not yet committed, including a batch being written."""
        return len(self._pending) + self._writing

    def status(self) -> LedgerStatus:
        """What `/health` and the live stats say of the ledger."""
        return LedgerStatus(
            pending=self.pending,
            written=self.written,
            dropped=self.dropped,
            rejected=self.rejected,
            failed_writes=self.failed_writes,
            last_error=self.last_error,
        )

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:  # one line a second, not one per request
                self._last_drop_log = now
                log.error(
                    "ledger buffer full (%d records waiting for the database): "
                    "%d usage records dropped so far",
                    len(self._pending),
                    self.dropped,
                )
            return
        self._pending.append(record)
        self._queued += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def caught_up(self, seconds: float) -> bool:
        """Wait until every record queued so far is committed (or set aside): then the
        database holds every request this process has finished. False if that did not
        happen within `seconds` (the database is away)."""
        mark = self._queued
        try:
            async with asyncio.timeout(seconds):
                while self._done < mark:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def _finished(self, records: int) -> None:
        self._done += records
        self._progress.set()

    async def run(self) -> None:
        """The writer task: runs until `close()` has flushed everything."""
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self._batch_size:
                await self._pause(self._flush_interval)  # let a batch gather
            self._wakeup.clear()
            await self._drain()
            if self._closing.is_set():
                return

    async def close(self, task: asyncio.Task[None], attempts: int = 5) -> None:
        """Stop the writer task after it has written everything buffered."""
        self._close_attempts = attempts
        self._closing.set()
        self._wakeup.set()
        await task

    async def _drain(self) -> None:
        failures = 0
        while self._pending:
            batch = [
                self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))
            ]
            try:
                await self._write_isolating(batch)
            except Exception as exc:  # the database is away: keep the rows, try again
                self.failed_writes += 1
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ledger write failed (%d records kept): %s", self.pending, exc)
                if self._closing.is_set() and failures >= self._close_attempts:
                    self.dropped += len(self._pending)
                    log.error("shutting down with %d usage records unwritten", len(self._pending))
                    self._finished(len(self._pending))
                    self._pending.clear()
                    return
                await self._pause(self._retry_interval)
                continue
            self.last_error = None

    async def _write_isolating(self, batch: list[UsageRecord]) -> None:
        """Write `batch`, in parts if the database refuses some record in it (each part
        its own transaction, so a refused part leaves nothing behind). When the database
        itself fails, whatever is not written yet goes back to the front of the buffer
        and the error is raised."""
        self._writing = len(batch)  # until each record is written, set aside or put back
        parts = [batch]  # a stack: the next part to write is the last
        while parts:
            part = parts.pop()
            try:
                await self._write(part)
            except RecordError as exc:
                if len(part) > 1:
                    middle = len(part) // 2
                    parts += [part[middle:], part[:middle]]
                else:
                    self._writing -= 1
                    self._reject(part[0], exc)
                    self._finished(1)
                continue
            except Exception:
                unwritten = part + [record for rest in reversed(parts) for record in rest]
                self._pending.extendleft(reversed(unwritten))
                self._writing = 0
                raise
            self._writing -= len(part)
            self.written += len(part)
            self._finished(len(part))

    def _reject(self, record: UsageRecord, exc: RecordError) -> None:
        self.rejected += 1
        # The whole record (it holds no secret, no prompt): enough to enter it by hand.
        log.error(
            "usage record set aside, the database refuses it (%s): %s",
            exc,
            orjson.dumps(dataclasses.asdict(record)).decode(),
        )

    async def _pause(self, seconds: float) -> None:
        # Closing cuts a pause short: shutdown should not wait out a flush interval.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
