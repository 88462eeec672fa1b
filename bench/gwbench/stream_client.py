"""A bounded streaming client: chat streams at a fixed concurrency until a count or a deadline.

Prints one JSON object: streams completed and failed, SSE events and bytes received,
time to first byte (TTFB: the first body bytes, which carry the first token) and total
time per stream as percentiles, and, for a hold test, when all streams were open at once
and when the first one ended.

    BENCH_KEY=... python -m gwbench.stream_client URL --model M --concurrency C --count N \
        --seconds S [--tokens 64] [--ramp SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
import uvloop


@dataclass
class Tally:
    concurrency: int
    launched: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    events: int = 0
    done_events: int = 0
    bytes: int = 0
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    open_now: int = 0
    open_max: int = 0
    all_open_at: float | None = None  # epoch seconds
    first_done_at: float | None = None

    def opened(self) -> None:
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        if self.all_open_at is None and self.open_now >= self.concurrency:
            self.all_open_at = time.time()

    def closed(self) -> None:
        self.open_now -= 1
        if self.first_done_at is None:
            self.first_done_at = time.time()


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally
) -> None:
    started = time.perf_counter()
    first: float | None = None
    events, carry, last = 0, b"", b""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.read())[:200]
                tally.errors.append(f"HTTP {resp.status}: {text!r}")
                return
            async for chunk in resp.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                    tally.opened()
                tally.bytes += len(chunk)
                # "data:" cannot straddle a 4-byte carry twice: each is counted once.
                joined = carry + chunk
                events += joined.count(b"data:")
                carry, last = joined[-4:], (last + chunk)[-32:]
    except (aiohttp.ClientError, OSError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        if first is not None:
            tally.closed()
        return
    if first is None:
        tally.errors.append("empty stream")
        return
    tally.closed()
    ended = time.perf_counter()
    if not last.rstrip().endswith(b"[DONE]"):
        tally.errors.append("stream ended without [DONE]")
        return
    tally.completed += 1
    tally.events += events
    tally.done_events += 1
    tally.ttfb.append((first - started) * 1000)
    tally.total.append((ended - started) * 1000)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tally = Tally(args.concurrency)
    key = os.environ.get("BENCH_KEY", "")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = orjson.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "Count to a hundred."}],
            "max_tokens": args.tokens,
            "stream": True,
        }
    )
    url = args.url.rstrip("/") + "/v1/chat/completions"
    deadline = time.monotonic() + args.seconds
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)

    async def worker(index: int) -> None:
        await asyncio.sleep(args.ramp * index / max(1, args.concurrency))
        while tally.launched < args.count and time.monotonic() < deadline:
            tally.launched += 1
            await one_stream(session, url, body, headers, tally)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(i)) for i in range(args.concurrency)]
        # Streams launched before the deadline may finish within the grace period.
        _, pending = await asyncio.wait(tasks, timeout=args.seconds + args.grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        cut = len(pending)
    wall = time.perf_counter() - began
    return {
        "launched": tally.launched,
        "completed": tally.completed,
        "errors": len(tally.errors) + cut,
        "error_samples": sorted(set(tally.errors))[:5] + (["cut at the deadline"] if cut else []),
        "events": tally.events,  # SSE events of completed streams, [DONE] included
        "chunks": tally.events - tally.done_events,  # without [DONE]
        "bytes": tally.bytes,
        "wall_s": wall,
        "ttfb_ms": percentiles(tally.ttfb),
        "total_ms": percentiles(tally.total),
        "open_max": tally.open_max,
        "all_open_at": tally.all_open_at,
        "first_done_at": tally.first_done_at,
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="most streams in all")
    parser.add_argument("--seconds", type=float, required=True, help="launch no stream after")
    parser.add_argument("--grace", type=float, default=30.0, help="then cut what is left")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--ramp", type=float, default=0.0, help="spread the first launches")
    args = parser.parse_args()
    print(orjson.dumps(uvloop.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
