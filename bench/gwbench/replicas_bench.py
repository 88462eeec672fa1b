"""Replicas of llmgw on one PostgreSQL and one Redis: requests a second with 1 and with
3 replicas, the Redis limiter against the memory limiter, in the same run.

Everything is started here and stopped at the end: a throwaway PostgreSQL cluster (as
`pg_ledger_bench` starts it; a database per measurement), a redis-server, an instant
fake vLLM, and `llmgw serve` processes (each its own port, admin socket and config; a
key of a tier never reached, made on the first before the others start, since key
changes do not yet reach a running replica). No balancer: the load generator (this
process, aiohttp, `--connections` requests in flight) sends its requests round-robin
over the replicas, for `--seconds` each measurement.

Replicas run on the gateway core, everything else on the load core: on a 2-core machine
3 replicas share one core, so the figures show what splitting costs and what the Redis
round trip adds, not how replicas scale on machines of their own.

The added median is measured with `--connections` in flight, so it holds the Redis
client's CPU and the queueing it causes, not the bare round trip (for that, see
`redis_limiter_bench`).

Prints a table, then one JSON object.
    cd bench && ../.venv/bin/python -m gwbench.replicas_bench [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from .pg_ledger_bench import cluster
from .procs import GATEWAY_CORE, LOAD_CORE, Processes, free_port
from .redis_limiter_bench import start_redis
from .servers import _GATEWAY_ENV, INSTANT_MODEL, VENV_BIN, Server, fake_vllm, wait_ready

BODY = orjson.dumps(
    {"model": INSTANT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
)


def replica(
    procs: Processes, name: str, upstream: Server, database: str, limits: str
) -> tuple[Server, Path]:
    work = procs.workdir / name
    work.mkdir()
    port, socket = free_port(), work / "admin.sock"
    config = work / "llmgw.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[admin]\nsocket = "{socket}"\nsecret_key = "bench-replicas"\n'
        f'[database]\nurl = "{database}"\n'
        f"[limits]\n{limits}\n"
        "[tiers.bench]\nrequests_per_minute = 1000000000\nrequests_per_hour = 1000000000\n"
        f'[[upstreams]]\nurl = "{upstream.url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GATEWAY_ENV)}
    argv = [str(VENV_BIN / "llmgw"), "serve", "--config", str(config)]
    proc = procs.start(name, argv, core=GATEWAY_CORE, env=env, inherit_env=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 30)
    return Server(name, proc, url), socket


def add_key(socket: Path) -> str:
    add = [
        str(VENV_BIN / "llmgw"), "--socket", str(socket), "key", "add",
        "--user", "bench", "--tier", "bench", "--json",
    ]  # fmt: skip
    created = subprocess.run(add, capture_output=True, text=True, check=True, timeout=30)
    key: str = json.loads(created.stdout)["key"]
    return key


async def load(urls: list[str], key: str, seconds: float, connections: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    took: list[float] = []
    served: Counter[int] = Counter()
    failed = 0
    turn = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal turn, failed
        while time.perf_counter() < deadline:
            index, turn = turn % len(urls), turn + 1
            start = time.perf_counter()
            async with session.post(urls[index], data=BODY, headers=headers) as resp:
                await resp.read()
            if resp.status == 200:
                took.append(time.perf_counter() - start)
                served[index] += 1
            else:
                failed += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):  # warm: connections, Redis script loaded
            await asyncio.gather(*(session.post(u, data=BODY, headers=headers) for u in urls))
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    quantiles = statistics.quantiles(took, n=100)
    return {
        "requests_s": len(took) / elapsed,
        "per_replica_s": [round(served[i] / elapsed, 1) for i in range(len(urls))],
        "median_ms": statistics.median(took) * 1000,
        "p99_ms": quantiles[98] * 1000,
        "failed": failed,
    }


async def measure(
    workdir: Path, pg: str, redis: str, backend: str, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    name = f"{backend}_{count}"
    admin = await asyncpg.connect(pg)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    database = pg.rpartition("/")[0] + f"/{name}"
    limits = f'backend = "redis"\nredis_url = "{redis}"' if backend == "redis" else ""
    procs = Processes(workdir / name)
    procs.workdir.mkdir()
    try:
        upstream = fake_vllm(procs, INSTANT_MODEL)
        first, socket = replica(procs, f"{name}-1", upstream, database, limits)
        key = add_key(socket)
        rest = [
            replica(procs, f"{name}-{n}", upstream, database, limits)[0]
            for n in range(2, count + 1)
        ]
        urls = [s.url + "/v1/chat/completions" for s in (first, *rest)]
        return await load(urls, key, args.seconds, args.connections)
    finally:
        procs.stop_all()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with cluster() as pg, tempfile.TemporaryDirectory(prefix="gwbench-replicas-") as work:
        servers = Processes(Path(work))
        try:
            redis = start_redis(servers, Path(work))
            for count in (1, 3):
                for backend in ("memory", "redis"):
                    results[f"{backend} x{count}"] = await measure(
                        Path(work), pg, redis, backend, count, args
                    )
        finally:
            servers.stop_all()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'run':<10} {'req/s':>7} {'per replica':<22} {'median ms':>9} {'p99 ms':>7}"]
    for run, r in results.items():
        per = " ".join(f"{x:.0f}" for x in r["per_replica_s"])
        rate, median, p99 = r["requests_s"], r["median_ms"], r["p99_ms"]
        lines.append(f"{run:<10} {rate:>7.0f} {per:<22} {median:>9.2f} {p99:>7.2f}")
    for count in (1, 3):
        added = results[f"redis x{count}"]["median_ms"] - results[f"memory x{count}"]["median_ms"]
        lines.append(f"Redis adds {added:+.2f} ms to the median with {count} replica(s)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=32, help="requests in flight")
    arguments = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {LOAD_CORE})
    figures = asyncio.run(main(arguments))
    print(table(figures), flush=True)
    print(orjson.dumps(figures).decode(), flush=True)
