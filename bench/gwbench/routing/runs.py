"""One routing run: a fresh fleet, the target in front of it, the workload through it.

Every run starts four simulated servers (cold prefix caches) and the router under test,
runs the load client on the load core, reads what the servers answered, and stops all of
it, whatever happens.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..load import BENCH_DIR
from ..measure import Meter
from ..procs import LOAD_CORE, Processes, core_times, tree_cpu
from ..servers import Server
from . import fleet
from .fleet import Sim

SERVERS = 4


@dataclass(frozen=True)
class Target:
    kind: str  # "llmgw" or "vllm-router"
    policy: str

    @property
    def name(self) -> str:
        return f"{self.kind} {self.policy}"


TARGETS = (
    Target("llmgw", "least-loaded"),
    Target("llmgw", "prefix-affinity"),
    Target("llmgw", "session"),
    Target("llmgw", "round-robin"),
    Target("vllm-router", "cache_aware"),
    Target("vllm-router", "power_of_two"),
    Target("vllm-router", "round_robin"),
)


@dataclass(frozen=True)
class Timing:
    """Seconds of a run: arrivals for `seconds`, measured after `warmup`; answers still
    open `grace` seconds after the last arrival are cut (and counted as errors)."""

    seconds: float
    warmup: float
    grace: float
    limit: int  # turns at most


@dataclass
class Run:
    target: Target
    workload: str
    load: float  # fraction of the fleet's capacity
    rate: float  # turns offered a second
    figures: dict[str, Any]  # the load client's
    requests_by_server: list[int]
    router_cpu_s: float
    load_core_busy: float  # fraction of the measured time, whoever was busy
    disturbance: float  # the worse core's foreign load (other jobs), as `bench/run` has it
    wall_s: float  # the whole run, start and stop included
    measured_s: float  # the load client's run
    sims_cpu_s: float  # the simulated servers' CPU over the run, together
    client_cpu_s: float  # the load client's

    @property
    def spread(self) -> float:
        """Max over mean of the requests each server answered."""
        counts = self.requests_by_server
        mean = sum(counts) / len(counts) if counts else 0.0
        return max(counts) / mean if mean else 0.0

    @property
    def hit_rate(self) -> float | None:
        per = self.figures["per_server"].values()
        queries = sum(s.get("vllm:prefix_cache_queries", 0.0) for s in per)
        hits = sum(s.get("vllm:prefix_cache_hits", 0.0) for s in per)
        return hits / queries if queries else None

    @property
    def load_core_ours(self) -> float:
        """The simulated servers' and the load client's CPU, a fraction of the time."""
        return (self.sims_cpu_s + self.client_cpu_s) / self.measured_s if self.measured_s else 0.0

    @property
    def waited(self) -> float:
        """The turns that waited for their user's previous answer, a fraction of those sent."""
        sent = self.figures["sent"]
        return self.figures["waited"] / sent if sent else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        sent = self.figures["sent"]
        return self.router_cpu_s / sent * 1000 if sent else 0.0

    def facts(self) -> dict[str, Any]:
        return {
            "target": self.target.name, "workload": self.workload, "load": self.load,
            "rate": self.rate, "requests_by_server": self.requests_by_server,
            "spread": self.spread, "hit_rate": self.hit_rate,
            "router_cpu_s": self.router_cpu_s, "router_cpu_ms_per_request": self.cpu_ms_per_request,
            "load_core_busy": self.load_core_busy, "load_core_ours": self.load_core_ours,
            "disturbance": self.disturbance, "wall_s": self.wall_s,
            "measured_s": self.measured_s, "sims_cpu_s": self.sims_cpu_s,
            "client_cpu_s": self.client_cpu_s, **self.figures,
        }  # fmt: skip


def start_target(
    procs: Processes, target: Target, sims: list[Server], tag: str, router: Path | None
) -> Server:
    if target.kind == "llmgw":
        return fleet.llmgw(procs, sims, target.policy, f"{tag}-llmgw")
    assert router is not None
    return fleet.vllm_router(procs, router, sims, target.policy, f"{tag}-router")


def run_one(
    procs: Processes, sim: Sim, target: Target, workload: str, load: float, rate: float,
    timing: Timing, seed: int, tag: str, router: Path | None,
) -> Run:  # fmt: skip
    began = time.monotonic()
    sims: list[Server] = []
    server: Server | None = None
    try:
        sims = fleet.fleet(procs, sim, SERVERS, tag)
        server = start_target(procs, target, sims, tag, router)
        spec = {
            "url": server.url + "/v1/chat/completions", "key": server.key, "model": fleet.MODEL,
            "workload": workload, "rate": rate, "seconds": timing.seconds,
            "warmup": timing.warmup, "grace": timing.grace, "limit": timing.limit,
            "seed": seed, "upstreams": [s.url for s in sims],
        }  # fmt: skip
        path = procs.workdir / f"{tag}-spec.json"
        path.write_text(json.dumps(spec))
        cores0, sims0, client0 = core_times(), _cpu(sims), _children_cpu()
        with Meter(procs, server.proc) as meter:
            figures = load_client(path, timing)
        cores1, sims1, client1 = core_times(), _cpu(sims), _children_cpu()
        requests = [fleet.chat_requests(s.proc.log) for s in sims]
    finally:
        for proc in [server.proc] if server is not None else []:
            procs.stop(proc, grace=5.0)
        for s in sims:
            procs.stop(s.proc, grace=2.0)
    busy = cores1[LOAD_CORE][0] - cores0[LOAD_CORE][0]
    return Run(
        target, workload, load, rate, figures, requests, meter.sample.cpu,
        busy / meter.sample.wall if meter.sample.wall else 0.0,
        meter.sample.disturbance, time.monotonic() - began, meter.sample.wall, sims1 - sims0,
        client1 - client0,
    )  # fmt: skip


def _cpu(servers: list[Server]) -> float:
    return sum(tree_cpu(s.proc.pid) for s in servers)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_client(spec: Path, timing: Timing) -> dict[str, Any]:
    argv = [
        "taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "gwbench.routing.client", str(spec)
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False,
        timeout=timing.seconds + timing.grace + 60,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
