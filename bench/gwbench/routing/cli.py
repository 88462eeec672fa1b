"""`bench/run routing`: llmgw's routing policies and vLLM's router over one simulated fleet.

For each workload and offered load, every target in turn: four simulated vLLM servers
started afresh, the target in front of them, the same seeded conversations through it.
Then the routing-decision micro-benchmark, one table of every run, and the issue's
targets met or missed. Writes `results/routing.md` and `routing.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import install
from ..load import BENCH_DIR
from ..procs import GATEWAY_CORE, Processes
from ..report import Report, header, versions
from ..report import markdown_table as targets_markdown
from ..report import summary as targets_summary
from ..report import text_table as targets_text
from . import table
from .capacity import capacity
from .fleet import Sim
from .runs import SERVERS, TARGETS, Run, Timing, run_one
from .workload import SHAPES, mix

RESULTS = BENCH_DIR / "results"
# A GPU that prefills 10,000 tokens a second and decodes a step in 20 ms, four times as
# fast: the same shape of a server in a quarter of the time, so a run of a few seconds
# holds hundreds of turns (see bench/README.md).
SIM = Sim(speedup=4.0)
FULL = Timing(seconds=10.0, warmup=3.0, grace=15.0, limit=2000)
QUICK = Timing(seconds=8.0, warmup=2.5, grace=10.0, limit=1000)
LOADS = (0.5, 0.7, 0.8, 0.9)
SEED = 17


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run routing",
        description="llmgw's routing policies against vllm-router's, over four simulated "
        "vLLM servers (see bench/README.md). About 15 minutes; --quick about 3.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="80 %% load only, shorter runs, for iterating",
    )  # fmt: skip
    parser.add_argument(
        "--workloads", default=",".join(SHAPES),
        help=f"comma-separated, of: {','.join(SHAPES)} (default: both)",
    )  # fmt: skip
    parser.add_argument(
        "--loads", default=None,
        help="offered loads in %% of the fleet's capacity (default 50,70,80,90; --quick 80)",
    )  # fmt: skip
    parser.add_argument(
        "--targets", default=None,
        help="comma-separated targets, e.g. 'llmgw prefix-affinity,vllm-router cache_aware' "
        "(default: all seven)",
    )  # fmt: skip
    parser.add_argument("--skip-vllm-router", action="store_true", help="llmgw's policies only")
    parser.add_argument("--seconds", type=float, help="arrivals a run (default 10; --quick 8)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"the workload's seed ({SEED})")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where to write results ({RESULTS})"
    )
    args = parser.parse_args(argv)
    args.workloads = args.workloads.split(",")
    unknown = [w for w in args.workloads if w not in SHAPES]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; workloads are {', '.join(SHAPES)}")
    loads = args.loads or ("80" if args.quick else ",".join(f"{x * 100:.0f}" for x in LOADS))
    args.loads = [float(x) / 100 for x in loads.split(",")]
    names = [t.name for t in TARGETS]
    chosen = args.targets.split(",") if args.targets else names
    if bad := [t for t in chosen if t not in names]:
        parser.error(f"unknown target {', '.join(bad)}; targets are {', '.join(names)}")
    if args.skip_vllm_router:
        chosen = [t for t in chosen if not t.startswith("vllm-router")]
    args.targets = [t for t in TARGETS if t.name in chosen]
    timing = QUICK if args.quick else FULL
    args.timing = replace(timing, seconds=args.seconds) if args.seconds else timing
    return args


def decision_bench() -> dict[str, Any]:
    """The routing-decision micro-benchmark, alone on the gateway core."""
    argv = [
        "taskset", "-c", str(GATEWAY_CORE), sys.executable, "-m", "gwbench.routing.decision",
    ]  # fmt: skip
    env = {"PYTHONPATH": str(BENCH_DIR), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=300)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    wants_router = any(t.kind == "vllm-router" for t in args.targets)
    router, router_version = install.vllm_router() if wants_router else (None, None)
    say("routing decision micro-benchmark")
    decision = decision_bench()
    mixes = {w: mix(SHAPES[w], args.seed) for w in args.workloads}
    caps = {w: capacity(SIM, SERVERS, m) for w, m in mixes.items()}
    for w, c in caps.items():
        say(
            f"{w}: mean prompt {mixes[w].prompt_tokens:,.0f} tokens, output "
            f"{mixes[w].output_tokens:.0f}; cache-blind capacity {c.requests_per_s:.1f} req/s"
        )
    workdir = Path(tempfile.mkdtemp(prefix="llmgw-routing-"))
    procs = Processes(workdir)
    runs: list[Run] = []
    failures: list[str] = []
    total = len(args.workloads) * len(args.loads) * len(args.targets)
    try:
        n = 0
        for workload in args.workloads:
            for load in args.loads:
                rate = load * caps[workload].requests_per_s
                for target in args.targets:
                    n += 1
                    label = f"{workload} {load:.0%} {target.name}"
                    say(f"run {n}/{total}: {label} ({rate:.1f} turns/s)")
                    try:
                        run = run_one(
                            procs, SIM, target, workload, load, rate, args.timing, args.seed,
                            f"r{n:02d}", router,
                        )  # fmt: skip
                    except Exception:
                        failures.append(f"{label}: {traceback.format_exc().splitlines()[-1]}")
                        say(f"run {label} failed:\n{traceback.format_exc()}")
                        continue
                    runs.append(run)
                    f = run.figures
                    say(
                        f"  TTFT p50/p90/p99 {table.cells(run)[4]}/{table.cells(run)[5]}/"
                        f"{table.cells(run)[6]} ms, {f['output_tokens_per_s']:,.0f} tok/s, "
                        f"hits {table.cells(run)[8]}, spread {run.spread:.2f}, "
                        f"{f['errors']} errors ({run.wall_s:.0f} s)"
                    )
    finally:
        procs.stop_all()
        if failures:
            logs = args.results / "logs"
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(workdir, logs, ignore=shutil.ignore_patterns("*.db*", "*.sock"))
            say(f"server logs kept in {logs}")
        shutil.rmtree(workdir, ignore_errors=True)

    report = Report(versions=versions(None) | ({"vllm-router": router_version or ""}))
    table.check_targets(report, runs, decision)
    for failure in failures:
        report.failed("run", failure)
    minutes = (time.monotonic() - began) / 60
    rows = [table.cells(r) for r in runs]
    title = header(report)
    command = f"bench/run routing {' '.join(argv)}".strip()
    setup = describe(mixes, caps, args.timing)
    print(f"\n{title}\n{setup}\n\n{table.text_table(rows)}\n")
    print(f"{targets_text(report)}\n\n{targets_summary(report)}; {command} ({minutes:.1f} min)")
    md = f"{title.replace(chr(10), '  ' + chr(10))}  \n{setup}\n\n{table.markdown_table(rows)}\n\n"
    md += (
        f"{targets_markdown(report)}\n\n{targets_summary(report)}; {command} ({minutes:.1f} min)\n"
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "routing.md").write_text(md)
    raw = {
        "command": command, "minutes": minutes, "sim": asdict(SIM), "timing": asdict(args.timing),
        "seed": args.seed, "workloads": {w: asdict(m) for w, m in mixes.items()},
        "capacity": {w: asdict(c) for w, c in caps.items()}, "decision": decision,
        "runs": [r.facts() for r in runs], "failures": failures,
    }  # fmt: skip
    (args.results / "routing.json").write_text(json.dumps(raw, indent=1, default=str))
    say(f"written {args.results / 'routing.md'} and routing.json")
    return 1 if failures else 0


def describe(mixes: dict[str, Any], caps: dict[str, Any], timing: Timing) -> str:
    parts = [
        f"{w}: {m.prompt_tokens:,.0f} prompt / {m.output_tokens:.0f} output tokens a turn, "
        f"capacity {caps[w].requests_per_s:.1f} turns/s cache-blind "
        f"({caps[w].ideal_requests_per_s:.0f} with every repeated token cached)"
        for w, m in mixes.items()
    ]
    return (
        f"{SERVERS} simulated servers ({SIM.prefill * 1e6:.0f} µs a prefill token, "
        f"{SIM.step * 1000:.0f} ms a decode step, {SIM.max_num_seqs} seqs, "
        f"{SIM.num_gpu_blocks} blocks of {SIM.block_size}); {'; '.join(parts)}; "
        f"{timing.seconds:g} s of arrivals a run, measured after {timing.warmup:g} s"
    )
