"""The steps of the bench: each puts load on the targets, measures, and adds table rows.

Targets (each pinned to the gateway core in turn; the load and the upstreams run on the
load core): `direct` (the client talks to the upstream itself), `bare` (the aiohttp
pass-through proxy, the ceiling of llmgw's stack), `llmgw` (its whole request path) and
`litellm` (the LiteLLM proxy). A step measures every target it needs in turn, so the
figures compared come from the same minute of the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import servers
from .load import BENCH_DIR, Wrk, streams
from .measure import Attempted, Policy, attempt, joint_note
from .procs import GATEWAY_CORE, Processes, memory_mb
from .report import Report
from .servers import HOLD_MODEL, INSTANT_MODEL, PACED_MODEL, STATIC_MODEL, Server


@dataclass(frozen=True)
class Budget:
    """Seconds (and counts) per measured run; every run is also capped in requests."""

    warmup: float = 3.0
    nonstream: float = 10.0
    latency: float = 8.0
    stream: float = 10.0
    paced: float = 12.0
    hold_tokens: int = 100  # at HOLD_TOKEN_DELAY: 20 s a stream, all open together
    ledger: float = 8.0
    limiter: float = 5.0
    max_requests: int = 1_000_000


QUICK = Budget(1.0, 4.0, 3.0, 4.0, 5.0, 60, 3.0, 2.0)
NONSTREAM_CONNECTIONS = 64
STREAM_CONCURRENCY = 16
PACED_CONCURRENCY = 64
HOLD_STREAMS = 1000
# 1,000 streams at 10 ms a token would be 100,000 events a second, more than one core
# relays in Python (and more than the fake produces): held streams go slower, which
# changes the token rate, not what is held in memory per stream.
HOLD_TOKEN_DELAY = 0.2


@dataclass
class Bench:
    procs: Processes
    policy: Policy
    budget: Budget
    report: Report
    wrk: Wrk | None = None
    upstreams: dict[str, Server] = field(default_factory=dict)  # by model
    targets: dict[str, dict[str, Server]] = field(default_factory=dict)  # kind -> name -> server
    raw: dict[str, Any] = field(default_factory=dict)  # every figure, for the JSON file
    log: Any = print

    def measure(self, label: str, server: Server | None, run: Any, **kw: Any) -> Attempted[Any]:
        put = server.proc if server is not None and server.proc.core == GATEWAY_CORE else None
        return attempt(self.procs, self.policy, label, put, run, **kw)


def fmt(n: float, digits: int = 0) -> str:
    return f"{n:,.{digits}f}"


# --- (a) non-streaming throughput ------------------------------------------------


def nonstream(bench: Bench) -> None:
    assert bench.wrk is not None
    wrk, budget = bench.wrk, bench.budget
    found: dict[str, tuple[float, float, Attempted[Any]]] = {}
    for name, server in bench.targets["static"].items():
        bench.log(f"non-streaming throughput: {name}")

        def load(seconds: float, server: Server = server) -> dict[str, Any]:
            assert wrk is not None
            return wrk.post(
                server.url, key=server.key, model=STATIC_MODEL,
                connections=NONSTREAM_CONNECTIONS, seconds=seconds,
                max_requests=budget.max_requests,
            )  # fmt: skip

        warm = budget.warmup * (2 if name == "litellm" else 1)  # it warms up slowly
        load(warm)
        got = bench.measure(f"nonstream {name}", server, lambda load=load: load(budget.nonstream))
        res = got.result
        cpu_ms = got.sample.cpu / res["requests"] * 1000 if res["requests"] else 0.0
        found[name] = (res["rps"], cpu_ms, got)
        bench.raw[f"nonstream.{name}"] = {**res, **got.facts()}
        errors = f", {res['errors']} errors" if res["errors"] else ""
        errors += ", request cap reached: a floor" if res["capped"] else ""
        cpu = f", {cpu_ms:.3f} ms CPU/req" if name != "direct" else " (nginx, load core)"
        bench.report.info(
            "non-streaming", f"{name}: req/s at c={NONSTREAM_CONNECTIONS}",
            f"{fmt(res['rps'])} req/s{cpu}{errors}", got.note(),
        )  # fmt: skip
    if "llmgw" not in found:
        return
    rps, cpu_ms, gw = found["llmgw"]
    for peer, title, target, least in (
        ("bare", "llmgw / bare aiohttp proxy", "≥ 0.85", 0.85),
        ("litellm", "llmgw / LiteLLM", "≥ 40", 40.0),
    ):
        if peer not in found:
            continue
        peer_rps, peer_cpu, other = found[peer]
        ratio = rps / peer_rps
        bench.report.check(
            "non-streaming", f"{title}, throughput", target, f"{ratio:.2f}", ratio >= least,
            joint_note(gw, other),
        )  # fmt: skip
        # Requests per CPU-second hardly change when other jobs share the core: a
        # check on the throughput ratio that a busy machine cannot bend much.
        bench.report.info(
            "non-streaming", f"{title}, by CPU per request", f"{peer_cpu / cpu_ms:.2f}",
            joint_note(gw, other),
        )  # fmt: skip
    bench.report.check(
        "non-streaming", "llmgw CPU per request", "≤ 0.35 ms", f"{cpu_ms:.3f} ms",
        cpu_ms <= 0.35, gw.note(),
    )  # fmt: skip


# --- (b) latency at concurrency 1 --------------------------------------------------


def latency(bench: Bench) -> None:
    assert bench.wrk is not None
    wrk, budget = bench.wrk, bench.budget
    medians: dict[str, tuple[float, Attempted[Any]]] = {}
    for name, server in bench.targets["static"].items():
        bench.log(f"latency at c=1: {name}")

        def load(seconds: float, server: Server = server) -> dict[str, Any]:
            assert wrk is not None
            return wrk.post(
                server.url, key=server.key, model=STATIC_MODEL, connections=1,
                seconds=seconds, max_requests=budget.max_requests,
            )  # fmt: skip

        load(budget.warmup / 2)
        got = bench.measure(f"latency {name}", server, lambda load=load: load(budget.latency))
        res = got.result
        medians[name] = (res["p50_us"] / 1000, got)
        bench.raw[f"latency.{name}"] = {**res, **got.facts()}
        bench.report.info(
            "latency c=1", f"{name}: median / p99",
            f"{res['p50_us'] / 1000:.3f} / {res['p99_us'] / 1000:.3f} ms", got.note(),
        )  # fmt: skip
    if "direct" not in medians:
        return
    direct, direct_got = medians["direct"]
    for name, (median, got) in medians.items():
        if name == "direct":
            continue
        added, note = median - direct, joint_note(got, direct_got)
        if name == "llmgw":
            bench.report.check(
                "latency c=1", "llmgw added median latency", "≤ 0.3 ms", f"{added:.3f} ms",
                added <= 0.3, note,
            )  # fmt: skip
        else:
            bench.report.info(
                "latency c=1", f"{name}: added median latency", f"{added:.3f} ms", note
            )


# --- (c) streaming CPU per chunk ---------------------------------------------------


def stream_cpu(bench: Bench) -> None:
    budget = bench.budget
    for name, server in bench.targets["instant"].items():
        bench.log(f"streaming CPU per chunk: {name}")

        def load(seconds: float, count: int, server: Server = server) -> dict[str, Any]:
            return streams(
                server.url, key=server.key, model=INSTANT_MODEL,
                concurrency=STREAM_CONCURRENCY, count=count, seconds=seconds,
            )  # fmt: skip

        load(budget.warmup, STREAM_CONCURRENCY * 4)
        got = bench.measure(f"stream {name}", server, lambda load=load: load(budget.stream, 20_000))
        res = got.result
        bench.raw[f"stream.{name}"] = {**res, **got.facts()}
        rate = res["completed"] / res["wall_s"]
        chunks = res["chunks"]
        per_chunk = got.sample.cpu / chunks * 1e6 if chunks else float("nan")
        errors = f", {res['errors']} errors" if res["errors"] else ""
        if name == "direct":
            bench.report.info(
                "streaming", f"direct: streams/s at c={STREAM_CONCURRENCY}",
                f"{rate:.0f} streams/s ({chunks / max(1, res['completed']):.0f} chunks each)"
                f"{errors}", got.note(),
            )  # fmt: skip
            continue
        figure = f"{per_chunk:.1f} µs ({rate:.0f} streams/s{errors})"
        if name == "llmgw":
            bench.report.check(
                "streaming", "llmgw CPU per chunk (64-token streams)", "≤ 15 µs", figure,
                per_chunk <= 15, got.note(),
            )  # fmt: skip
        else:
            bench.report.info("streaming", f"{name}: CPU per chunk", figure, got.note())


# --- (d) paced streams at concurrency 64 -------------------------------------------


def paced(bench: Bench) -> None:
    budget = bench.budget
    found: dict[str, tuple[float, float, Attempted[Any]]] = {}
    for name, server in bench.targets["paced"].items():
        bench.log(f"paced streams at c={PACED_CONCURRENCY}: {name}")

        def load(seconds: float, server: Server = server) -> dict[str, Any]:
            return streams(
                server.url, key=server.key, model=PACED_MODEL, concurrency=PACED_CONCURRENCY,
                count=PACED_CONCURRENCY * int(seconds / 0.5 + 2), seconds=seconds,
            )  # fmt: skip

        got = bench.measure(f"paced {name}", server, lambda load=load: load(budget.paced))
        res = got.result
        bench.raw[f"paced.{name}"] = {**res, **got.facts()}
        tokens = res["chunks"] / res["wall_s"]
        ttft = res["ttfb_ms"]["p50"] or float("nan")
        found[name] = (tokens, ttft, got)
        errors = f", {res['errors']} errors" if res["errors"] else ""
        bench.report.info(
            "paced c=64", f"{name}: chunks/s, median TTFT",
            f"{fmt(tokens)} chunks/s, {ttft:.1f} ms{errors}", got.note(),
        )  # fmt: skip
        if name != "direct" and res["chunks"]:
            # Paced, each read carries one event: the per-chunk cost without batching.
            bench.report.info(
                "paced c=64", f"{name}: CPU per chunk, one event per read",
                f"{got.sample.cpu / res['chunks'] * 1e6:.1f} µs", got.note(),
            )  # fmt: skip
    if {"direct", "llmgw"} <= found.keys():
        (d_tok, d_ttft, d_got), (g_tok, g_ttft, g_got) = found["direct"], found["llmgw"]
        slower = (1 - g_tok / d_tok) * 100
        later = (g_ttft / d_ttft - 1) * 100
        note = joint_note(d_got, g_got)
        bench.report.check(
            "paced c=64", "llmgw throughput vs direct", "within 5 %", f"{-slower:+.1f} %",
            slower <= 5, note,
        )  # fmt: skip
        bench.report.check(
            "paced c=64", "llmgw median TTFT vs direct", "within 5 %", f"{later:+.1f} %",
            later <= 5, note,
        )  # fmt: skip


# --- (e) memory --------------------------------------------------------------------


def memory(bench: Bench) -> None:
    """A fresh llmgw: its RSS idle, then with 1,000 paced streams open at once."""
    bench.log("memory: idle, then 1,000 streams held open")
    gateway = servers.llmgw(
        bench.procs, {HOLD_MODEL: bench.upstreams[HOLD_MODEL]}, name="llmgw-memory"
    )
    try:
        time.sleep(2)
        idle, _ = memory_mb(gateway.proc.pid)
        bench.report.check("memory", "llmgw idle RSS", "≤ 60 MB", f"{idle:.1f} MB", idle <= 60)
        samples: list[tuple[float, float]] = []

        def tick() -> None:
            samples.append((time.time(), memory_mb(gateway.proc.pid)[0]))

        seconds = bench.budget.hold_tokens * HOLD_TOKEN_DELAY
        res = streams(
            gateway.url, key=gateway.key, model=HOLD_MODEL, concurrency=HOLD_STREAMS,
            count=HOLD_STREAMS, seconds=seconds, tokens=bench.budget.hold_tokens, on_tick=tick,
        )  # fmt: skip
        _, hwm = memory_mb(gateway.proc.pid)
    finally:
        bench.procs.stop(gateway.proc)
    start, end = res["all_open_at"], res["first_done_at"]
    held = [rss for t, rss in samples if start and end and start <= t <= end]
    bench.raw["memory"] = {"idle_mb": idle, "hwm_mb": hwm, "samples": samples, **res}
    if not held:
        bench.report.add(
            "memory", f"llmgw RSS, {HOLD_STREAMS:,} streams open", "≤ 150 MB",
            f"never all open (at most {res['open_max']}; {res['errors']} errors)", "MISS",
        )  # fmt: skip
        return
    rss = max(held)
    bench.report.check(
        "memory", f"llmgw RSS, {HOLD_STREAMS:,} streams open", "≤ 150 MB",
        f"{rss:.1f} MB (peak {hwm:.1f})", rss <= 150,
    )  # fmt: skip


def peaks(bench: Bench) -> None:
    """Peak RSS (VmHWM) of the targets after everything they served in this run."""
    seen = {}
    for kind in bench.targets.values():
        for name, server in kind.items():
            if server.proc.core == GATEWAY_CORE and server.proc.alive():
                seen[name] = memory_mb(server.proc.pid)[1]
    for name, hwm in seen.items():
        bench.report.info("memory", f"{name}: peak RSS over the run", f"{hwm:.1f} MB")


# --- (f) ledger, (g) limiter -------------------------------------------------------


def _pinned_module(module: str, *args: str, timeout: float) -> dict[str, Any]:
    argv = ["taskset", "-c", str(GATEWAY_CORE), sys.executable, "-m", module, *args]
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _pinned_step(bench: Bench, name: str, seconds: float) -> tuple[dict[str, Any], Any]:
    """Run `gwbench.<name>_bench` on the gateway's core (rerun if disturbed); its result,
    also kept in the raw figures, and the attempt."""
    got = attempt(
        bench.procs, bench.policy, name, None,
        lambda: _pinned_module(
            f"gwbench.{name}_bench", "--seconds", str(seconds), timeout=4 * seconds + 60
        ),
        children_core=GATEWAY_CORE,
    )  # fmt: skip
    res: dict[str, Any] = got.result
    bench.raw[name] = {**res, **got.facts()}
    return res, got


def ledger(bench: Bench) -> None:
    bench.log("ledger rows/s")
    res, got = _pinned_step(bench, "ledger", bench.budget.ledger)
    sat, off = res["saturated"], res["offered"]
    bench.report.check(
        "ledger", "rows committed a second (saturated)", "≥ 20,000",
        f"{fmt(sat['rows_per_s'])} rows/s", sat["rows_per_s"] >= 20_000, got.note(),
    )  # fmt: skip
    rec = off["record_us"]
    bench.report.check(
        "ledger", f"record() at {fmt(res['rate'])} rows/s: never waits", "returns at once",
        f"p50 {rec['p50']:.2f} µs, p99 {rec['p99']:.2f} µs, max {rec['max']:.0f} µs;"
        f" all committed: {off['all_committed']}",
        off["all_committed"] and rec["p99"] < 10,
    )  # fmt: skip
    lag = off["loop_lag_ms"]
    bench.report.info(
        "ledger", "event loop held by the writer (same run)",
        f"p99 {lag['p99']:.1f} ms, max {lag['max']:.1f} ms",
    )  # fmt: skip


def limiter(bench: Bench) -> None:
    bench.log("limiter decisions/s")
    res, got = _pinned_step(bench, "limiter", bench.budget.limiter)
    for name, what in (("requests", "requests per minute and hour"), ("every", "every limit")):
        bench.report.info(
            "limiter", f"MemoryLimiter admit + settle, {what}, over {fmt(res['keys'])} keys",
            f"{fmt(res[name]['per_s'])} decisions/s"
            f" ({fmt(res[name + '_headers']['per_s'])}/s with headers())",
            got.note(),
        )  # fmt: skip
