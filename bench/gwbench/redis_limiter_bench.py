"""The limiter backends side by side: memory, and Redis on a redis-server of its own.

Each backend is driven through the interface the gateway uses (`await limiter.admit(key,
limits, demand)`, then `await reservation.settle(used)`) over `--keys` keys with limits
never reached, twice: `requests` (requests per minute and hour only) and `every` (every
limit of issue 15 on: tokens per minute and day, requests in flight, a key and a user
budget; `limiter_bench`'s two sets). For each: first one admission at a time, timing
admit and settle together (the round trips: median and p99), then `--tasks` admissions
in flight at once, as a busy gateway has them (decisions a second); and the bench's CPU
time per decision in both, which is what the gateway would spend. Each measurement
stops after `--calls` admissions or `--seconds`, whichever comes first. The bench runs
on core 0, redis-server (started here, on a free loopback port, persisting nothing;
stopped at the end) on core 1, as the gateway and its Redis would be on two machines'
worth of cores.

Prints one JSON object.
  PYTHONPATH=bench python -m gwbench.redis_limiter_bench [--keys 10000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from llmgw.limits import Limiter, Limits, MemoryLimiter
from llmgw.limits.redis import RedisLimiter

from .limiter_bench import DEMAND, LIMITS, USED
from .procs import GATEWAY_CORE, LOAD_CORE, Processes, free_port


async def decide(limiter: Limiter, key: int, limits: Limits) -> None:
    await (await limiter.admit(key, limits, DEMAND)).settle(USED)


async def one_at_a_time(
    limiter: Limiter, limits: list[Limits], calls: int, seconds: float
) -> dict[str, Any]:
    took: list[float] = []
    keys = len(limits)
    began, cpu = time.perf_counter(), time.process_time()
    deadline = began + seconds
    while len(took) < calls and (start := time.perf_counter()) < deadline:
        key = len(took) % keys
        await decide(limiter, key, limits[key])
        took.append(time.perf_counter() - start)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    quantiles = statistics.quantiles(took, n=100)
    return {
        "decisions": len(took),
        "per_s": len(took) / elapsed,
        "cpu_us": cpu / len(took) * 1e6,
        "median_us": statistics.median(took) * 1e6,
        "p99_us": quantiles[98] * 1e6,
    }


async def many_at_once(
    limiter: Limiter, limits: list[Limits], calls: int, seconds: float, tasks: int
) -> dict[str, Any]:
    done, keys = 0, len(limits)
    deadline = time.perf_counter() + seconds

    async def worker(first: int) -> None:
        nonlocal done
        key = first
        while done < calls and time.perf_counter() < deadline:
            await decide(limiter, key % keys, limits[key % keys])
            done += 1
            key += tasks

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {"decisions": done, "per_s": done / elapsed, "cpu_us": cpu / done * 1e6, "tasks": tasks}


async def measure(limiter: Limiter, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, limits_of in LIMITS.items():
        limits = [limits_of(key) for key in range(args.keys)]
        await one_at_a_time(limiter, limits, 1000, 1.0)  # warm: connections, script loaded
        result[name] = {
            "one_at_a_time": await one_at_a_time(limiter, limits, args.calls, args.seconds),
            "many_at_once": await many_at_once(
                limiter, limits, args.calls, args.seconds, args.tasks
            ),
        }
    return result


def start_redis(processes: Processes, workdir: Path) -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise SystemExit("redis_limiter_bench: needs redis-server (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = processes.start("redis", argv, core=LOAD_CORE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"redis_limiter_bench: redis-server did not start:\n{proc.log_tail()}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"keys": args.keys}
    result["memory"] = await measure(MemoryLimiter(), args)
    with tempfile.TemporaryDirectory(prefix="gwbench-redis-") as workdir:
        processes = Processes(Path(workdir))
        try:
            redis = RedisLimiter.from_url(start_redis(processes, Path(workdir)))
            try:
                result["redis"] = await measure(redis, args)
            finally:
                await redis.close()
        finally:
            processes.stop_all()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200_000, help="per measurement, at most")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement, at most")
    parser.add_argument("--tasks", type=int, default=64, help="admissions in flight at once")
    arguments = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {GATEWAY_CORE})
    print(orjson.dumps(asyncio.run(main(arguments))).decode(), flush=True)
