"""The routing bench's load: one run of a workload's turns against one target.

Each user is a coroutine going through its turns in order: a turn goes at its arrival
time, or when the user's previous answer ended plus the reading time, whichever is later
(`workload`). Every turn is a streamed chat completion carrying the whole conversation;
the answer received becomes part of the next turn. Measured over the window from the end
of the warm-up to the end of the arrivals: time to the first content token of the turns
sent in it, output tokens received in it, and the fleet's prefix-cache counters and
queue lengths from each server's `/metrics`. Prints one JSON object.

    python -m gwbench.routing.client SPEC.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from ..stream_client import percentiles
from .workload import MIN_THINK, SHAPES, Turn, plan

SAMPLE_EVERY = 0.5  # seconds between reads of the servers' queues


@dataclass
class Tally:
    warmup: float
    end: float  # the last arrival's time bound: the window is [warmup, end)
    began: float = 0.0  # monotonic time of the run's start
    ttft_ms: list[float] = field(default_factory=list)  # turns sent in the window
    tokens_in_window: int = 0
    tokens: int = 0
    sent: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)  # how long turns waited for their user
    by_index: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))

    def now(self) -> float:
        return time.monotonic() - self.began

    def token(self, n: int = 1) -> None:
        self.tokens += n
        if self.warmup <= self.now() < self.end:
            self.tokens_in_window += n


async def one_turn(
    session: aiohttp.ClientSession, spec: dict[str, Any], turn: Turn,
    history: list[dict[str, str]], tally: Tally,
) -> str | None:  # fmt: skip
    """Send a turn; its answer's text, or None when it failed (recorded in the tally)."""
    messages = [{"role": "system", "content": turn.system}, *history]
    messages.append({"role": "user", "content": turn.message})
    body = {
        "model": spec["model"], "messages": messages, "max_tokens": turn.max_tokens,
        "stream": True, "user": turn.user,
    }  # fmt: skip
    headers = {"Content-Type": "application/json", "x-session-id": turn.session}
    if spec.get("key"):
        headers["Authorization"] = f"Bearer {spec['key']}"
    sent_at = tally.now()
    measured = tally.warmup <= sent_at < tally.end
    tally.sent += 1
    first: float | None = None
    parts: list[str] = []
    done = False
    try:
        async with session.post(spec["url"], data=orjson.dumps(body), headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.read())[:200]
                tally.errors.append(f"HTTP {resp.status}: {text!r}")
                return None
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    tally.errors.append(f"error event: {str(event['error'])[:200]}")
                    return None
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if first is None:
                            first = tally.now()
                        parts.append(content)
                        tally.token()
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return None
    if not done or first is None:
        tally.errors.append("stream ended without [DONE]" if first else "no content token")
        return None
    tally.completed += 1
    if measured:
        ttft = (first - sent_at) * 1000
        tally.ttft_ms.append(ttft)
        tally.by_index[min(turn.index, 4)].append(ttft)
    return "".join(parts).strip()


async def user(
    session: aiohttp.ClientSession, spec: dict[str, Any], turns: list[Turn], tally: Tally
) -> None:
    history: list[dict[str, str]] = []
    ready = 0.0  # when the user may speak again
    for turn in turns:
        if turn.index == 1:
            history = []
        for message, made_up in turn.earlier:  # the exchanges before the run met the user
            history += [
                {"role": "user", "content": message},
                {"role": "assistant", "content": made_up},
            ]
        go = max(turn.at, ready)
        if go > turn.at + 0.001:
            tally.waited.append(go - turn.at)
        if go >= tally.end + spec["grace"]:
            return
        await asyncio.sleep(max(0.0, go - tally.now()))
        answer = await one_turn(session, spec, turn, history, tally)
        if answer is None:  # the conversation is over for this user: start a new one
            history = []
            ready = tally.now() + MIN_THINK
            continue
        history += [
            {"role": "user", "content": turn.message},
            {"role": "assistant", "content": answer},
        ]
        ready = tally.now() + MIN_THINK


class Fleet:
    """The servers' `/metrics`: prefix-cache counters and queue lengths."""

    def __init__(self, session: aiohttp.ClientSession, urls: list[str]) -> None:
        self._session = session
        self.urls = urls
        self.load_samples: dict[str, list[float]] = {u: [] for u in urls}

    async def read(self, url: str) -> dict[str, float]:
        async with self._session.get(url + "/metrics") as resp:
            text = await resp.text()
        values: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                values[family.name] += sample.value
        return values

    async def counters(self) -> dict[str, dict[str, float]]:
        read = await asyncio.gather(*(self.read(u) for u in self.urls))
        names = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
        return {u: {n: r.get(n, 0.0) for n in names} for u, r in zip(self.urls, read, strict=True)}

    async def sample(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            read = await asyncio.gather(*(self.read(u) for u in self.urls))
            for url, r in zip(self.urls, read, strict=True):
                load = r.get("vllm:num_requests_running", 0.0)
                self.load_samples[url].append(load + r.get("vllm:num_requests_waiting", 0.0))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    shape = SHAPES[spec["workload"]]
    turns = plan(shape, spec["rate"], spec["seconds"], spec["seed"], spec["limit"])
    tally = Tally(warmup=spec["warmup"], end=spec["seconds"])
    by_user: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_user[turn.user].append(turn)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        fleet = Fleet(session, spec["upstreams"])
        before = after = await fleet.counters()
        tally.began = time.monotonic()
        users = [asyncio.create_task(user(session, spec, t, tally)) for t in by_user.values()]

        async def watch() -> None:
            nonlocal before
            await asyncio.sleep(tally.warmup)
            before = await fleet.counters()
            while tally.now() < tally.end:
                await fleet.sample()
                await asyncio.sleep(SAMPLE_EVERY)

        watcher = asyncio.create_task(watch())
        _, pending = await asyncio.wait(users, timeout=spec["seconds"] + spec["grace"])
        for task in (*pending, watcher):
            task.cancel()
        for task in (*pending, watcher):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        wall = tally.now()
        after = await fleet.counters()
    cut = tally.sent - tally.completed - len(tally.errors)
    per_server = {u: {k: after[u][k] - before[u][k] for k in after[u]} for u in spec["upstreams"]}
    window = max(1e-9, tally.end - tally.warmup)
    return {
        "planned": len(turns),
        "sent": tally.sent,
        "completed": tally.completed,
        "errors": len(tally.errors) + cut,
        "error_samples": sorted(set(tally.errors))[:5] + ([f"{cut} cut at the end"] if cut else []),
        "measured": len(tally.ttft_ms),
        "ttft_ms": percentiles(tally.ttft_ms),
        "ttft_ms_by_turn": {str(k): percentiles(v) for k, v in sorted(tally.by_index.items())},
        "output_tokens": tally.tokens,
        "output_tokens_per_s": tally.tokens_in_window / window,
        "offered_per_s": sum(1 for t in turns if tally.warmup <= t.at < tally.end) / window,
        "waited": len(tally.waited),
        "waited_mean_s": sum(tally.waited) / len(tally.waited) if tally.waited else 0.0,
        "per_server": per_server,
        "load_samples": fleet.load_samples,
        "wall_s": wall,
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    print(orjson.dumps(uvloop.run(run(spec))).decode(), flush=True)


if __name__ == "__main__":
    main()
