"""The usage ledger on its own: rows committed a second, and what recording one costs.

llmgw's `Ledger` with `SqliteStore.insert_request_logs` as its writer, wired as `llmgw/app.py`
wires them (flush every 0.25 s, batches of 1000), on a temporary SQLite file under
uvloop. Two runs, each bounded in time and rows:

- *saturated*: records are appended as fast as the loop allows while no more than
  `--backlog` wait, so the writer never idles: the most rows a second it commits;
- *offered*: records arrive at `--rate` a second (in 1 ms ticks), as a busy gateway's
  request path would hand them over: every one is committed, and the time each
  `record()` call takes and the longest the event loop was held (by the writer's
  Python work between its SQLite calls) are what a request would feel.

Prints one JSON object.  python -m gwbench.ledger_bench [--seconds 8] [--rate 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from llmgw.context import RequestIds
from llmgw.ledger import Ledger, UsageRecord
from llmgw.store import SqliteStore, Store

KEYS = 50
REQUEST_IDS = RequestIds()
MODELS = ("llama-3.1-70b", "qwen2.5-coder-32b", "llama-3.1-8b")


def make_record(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=REQUEST_IDS.next(),  # as the gateway makes them: one per request
        user_id=f"user{i % KEYS:03d}",
        api_key_id=i % KEYS + 1,
        endpoint="/v1/chat/completions",
        method="POST",
        status_code=429 if i % 50 == 0 else 200,
        duration_ms=120.0 + i % 997,
        ttft_ms=40.0 + i % 89,
        prompt_tokens=600 + i % 300,
        completion_tokens=150 + i % 100,
        usage_source="reported",
        model=MODELS[i % 3],
        upstream="http://vllm-1:8100",
        timestamp=time.time(),
    )


class LoopWatch:
    """A task that sleeps 1 ms at a time and notes how late it wakes up."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t0 - 0.001)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(path: Path, seconds: float, max_rows: int, rate: float | None, backlog: int) -> Any:
    store = await SqliteStore.open(path)
    result = await measure(store, seconds, max_rows, rate, backlog)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT count(*) FROM request_logs").fetchone()[0]
    all_committed = rows == result["appended"] and result["dropped"] == 0
    return result | {"committed": rows, "all_committed": all_committed}


async def measure(
    store: Store, seconds: float, max_rows: int, rate: float | None, backlog: int
) -> dict[str, Any]:
    """The ledger writing into `store` (closed by the caller), as `app.py` wires it."""
    for k in range(KEYS):
        async with store.transaction() as tx:
            await tx.insert_key(
                key_hash=f"hash{k}", key_prefix=f"sk-internal-{k:04d}", user_id=f"user{k:03d}",
                tier="standard", description="",
            )  # fmt: skip
    ledger = Ledger(store.insert_request_logs, flush_interval=0.25, batch_size=1000)
    writer = asyncio.create_task(ledger.run())
    calls: list[float] = []
    appended = 0
    warmup = 1.0
    began = time.perf_counter()
    end = began + warmup + seconds
    mark: tuple[float, int] | None = None
    with LoopWatch() as watch:
        while (now := time.perf_counter()) < end and appended < max_rows:
            if mark is None and now - began >= warmup:
                mark = (now, ledger.written)
                watch.lags.clear()
            if rate is not None:
                due = int((now - began) * rate) - appended  # open loop: the clock decides
                burst = min(due, max_rows - appended)
            else:
                burst = 0 if ledger.pending >= backlog else min(200, max_rows - appended)
            for _ in range(burst):
                record = make_record(appended)
                t0 = time.perf_counter_ns()
                ledger.record(record)
                calls.append(time.perf_counter_ns() - t0)
                appended += 1
            await asyncio.sleep(0.001 if burst == 0 or rate is not None else 0)
        stop = time.perf_counter()
        written_at_stop = ledger.written
        lags = list(watch.lags)
    await ledger.close(writer)
    t_mark, w_mark = mark or (began, 0)
    span = stop - t_mark
    return {
        "rows_per_s": (written_at_stop - w_mark) / span if span > 0 else 0.0,
        "appended": appended,
        "offered_per_s": appended / (stop - began),
        "dropped": ledger.dropped,
        "record_us": {
            "p50": quantile(calls, 0.5) / 1000,
            "p99": quantile(calls, 0.99) / 1000,
            "max": max(calls, default=0) / 1000,
        },
        "loop_lag_ms": {"p99": quantile(lags, 0.99) * 1000, "max": max(lags, default=0) * 1000},
        "seconds": span,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-ledger-") as tmp:
        saturated = await run(
            Path(tmp) / "saturated.db", args.seconds, args.max_rows, None, args.backlog
        )
        offered = await run(
            Path(tmp) / "offered.db", args.seconds, args.max_rows, args.rate, args.backlog
        )
    return {"saturated": saturated, "offered": offered, "rate": args.rate}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--backlog", type=int, default=5_000)
    print(orjson.dumps(uvloop.run(main(parser.parse_args()))).decode(), flush=True)
