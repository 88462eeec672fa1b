"""`bench/run`: install what is missing, start every server, run the steps, print one table.

Steps (all by default): nonstream, latency, stream, paced, memory, ledger, limiter;
`--profile` adds py-spy profiles of llmgw under non-streaming and streaming load.
`bench/run routing` is the routing bench instead (`gwbench.routing`).
Everything the bench starts runs in its own process group and is stopped on the way
out, whatever the way out is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import install, servers, steps
from .load import Wrk
from .measure import Policy
from .procs import LOAD_CORE, Processes
from .report import Report, header, markdown_table, summary, text_table, versions
from .servers import HOLD_MODEL, INSTANT_MODEL, PACED_MODEL, STATIC_MODEL

STEPS: dict[str, Callable[[steps.Bench], None]] = {
    "nonstream": steps.nonstream,
    "latency": steps.latency,
    "stream": steps.stream_cpu,
    "paced": steps.paced,
    "memory": steps.memory,
    "ledger": steps.ledger,
    "limiter": steps.limiter,
}
RESULTS = Path(__file__).resolve().parents[1] / "results"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Measure llmgw against aiohttp itself and LiteLLM.",
        epilog="bench/run routing [--quick] [...]: llmgw's routing policies against "
        "vllm-router over four simulated vLLM servers instead; bench/run routing --help "
        "for its options.",
    )
    parser.add_argument(
        "--only", help=f"comma-separated steps, of: {','.join(STEPS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs, for iterating")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--limits", choices=("requests", "every"), default="requests",
        help="llmgw's tier: requests per minute and hour only (default), or every limit of "
        "issue 15 on (tokens per minute and day, in flight, key and user budgets), none reached",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true", help="also profile llmgw with py-spy (results/)"
    )
    parser.add_argument(
        "--max-disturbance", type=float, default=0.05, metavar="F",
        help="rerun a step when foreign load on a core exceeds this fraction (0.05)",
    )  # fmt: skip
    parser.add_argument("--attempts", type=int, default=3, help="tries per step (3)")
    parser.add_argument(
        "--retry-budget", type=float, default=300.0, metavar="S",
        help="seconds the run may spend waiting for quiet and rerunning (300)",
    )  # fmt: skip
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where to write results ({RESULTS})"
    )
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(STEPS)
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}; steps are {', '.join(STEPS)}")
    args.steps = [s for s in STEPS if s in chosen]  # always in the bench's order
    return args


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops servers


def start_servers(bench: steps.Bench, args: argparse.Namespace, litellm: Path | None) -> None:
    procs, chosen = bench.procs, set(args.steps)
    static = chosen & {"nonstream", "latency"} or args.profile
    instant = "stream" in chosen or args.profile
    if static:
        say("starting nginx")
        bench.upstreams[STATIC_MODEL] = servers.nginx(procs, install.find_program("nginx") or "")
    if instant:
        say("starting the fake vLLMs")
        bench.upstreams[INSTANT_MODEL] = servers.fake_vllm(procs, INSTANT_MODEL)
    if "paced" in chosen:
        bench.upstreams[PACED_MODEL] = servers.fake_vllm(
            procs, PACED_MODEL, first_token_delay=0.05, token_delay=0.01
        )
    if "memory" in chosen:
        bench.upstreams[HOLD_MODEL] = servers.fake_vllm(
            procs, HOLD_MODEL, first_token_delay=0.05, token_delay=steps.HOLD_TOKEN_DELAY
        )
    kinds = {"static": STATIC_MODEL, "instant": INSTANT_MODEL, "paced": PACED_MODEL}
    for kind, model in kinds.items():
        if model in bench.upstreams:
            bench.targets[kind] = {"direct": bench.upstreams[model]}
    gateway_upstreams = {m: s for m, s in bench.upstreams.items() if m != HOLD_MODEL}
    if not gateway_upstreams:
        return
    say("starting the bare aiohttp proxies")
    for kind in ("static", "instant", "paced"):
        if kind in bench.targets:
            bench.targets[kind]["bare"] = servers.bare_proxy(procs, bench.upstreams[kinds[kind]])
    say("starting llmgw")
    gateway = servers.llmgw(procs, gateway_upstreams, limits=args.limits)
    for kind in bench.targets:
        bench.targets[kind]["llmgw"] = gateway
    peers = {m: s for m, s in gateway_upstreams.items() if m in (STATIC_MODEL, INSTANT_MODEL)}
    if litellm is not None and peers:
        say("starting the LiteLLM proxy (about 20 s)")
        try:
            proxy = servers.litellm(procs, litellm, peers)
        except RuntimeError as exc:  # the rest of the bench still has its figures
            say(f"LiteLLM did not start: {exc}")
            bench.report.failed("litellm", f"LiteLLM did not start: {exc}")
            return
        for kind in ("static", "instant"):
            if kind in bench.targets:
                bench.targets[kind]["litellm"] = proxy


def main() -> int:
    if sys.argv[1:2] == ["routing"]:
        return routing(sys.argv[2:])
    args = parse_args()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    os.sched_setaffinity(0, {LOAD_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs two cores (one for the gateway, one for the load)")

    needs_http = set(args.steps) & {"nonstream", "latency"}
    programs = install.system_packages() if needs_http or args.profile else {}
    wants_litellm = not args.skip_litellm and set(args.steps) & {"nonstream", "latency", "stream"}
    litellm, litellm_version = install.litellm() if wants_litellm else (None, None)
    py_spy = install.py_spy() if args.profile else None

    report = Report(versions=versions(litellm_version) | {"llmgw limits": args.limits})
    policy = Policy(
        args.max_disturbance, max(1, args.attempts), retry_budget=args.retry_budget, log=say
    )
    if args.quick:
        policy.attempts = min(policy.attempts, 2)
    workdir = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    procs = Processes(workdir)
    bench = steps.Bench(
        procs, policy, steps.QUICK if args.quick else steps.Budget(), report, log=say
    )
    if "wrk" in programs:
        bench.wrk = Wrk(programs["wrk"])
    args.results.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    failed = False
    try:
        start_servers(bench, args, litellm)
        failed = any(row.verdict == "FAILED" for row in report.rows)
        for name in args.steps:
            try:
                STEPS[name](bench)
            except Exception as exc:  # one broken step must not hide the others' figures
                failed = True
                say(f"step {name} failed:\n{traceback.format_exc()}")
                report.failed(name, str(exc))
        steps.peaks(bench)
        if py_spy is not None:
            from .profile import profile

            profile(bench, py_spy, args.results)
    except BaseException:
        failed = True
        raise
    finally:
        procs.stop_all()
        if failed:
            logs = args.results / "logs"
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(workdir, logs, ignore=shutil.ignore_patterns("*.db*", "*.sock"))
            say(f"server logs kept in {logs}")
        shutil.rmtree(workdir, ignore_errors=True)

    minutes = (time.monotonic() - began) / 60
    title = header(report)
    table = text_table(report)
    print(f"\n{title}\n\n{table}\n\n{summary(report)} ({minutes:.1f} min)")
    md = f"{title.replace(chr(10), '  ' + chr(10))}\n\n{markdown_table(report)}\n\n"
    md += f"{summary(report)}; bench/run {' '.join(sys.argv[1:])} ({minutes:.1f} min)\n"
    (args.results / "latest.md").write_text(md)
    (args.results / "latest.json").write_text(json.dumps(bench.raw, indent=1, default=str))
    say(f"written {args.results / 'latest.md'} and latest.json")
    return 1 if failed else 0


def routing(argv: list[str]) -> int:
    from .routing.cli import main as routing_main

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    os.sched_setaffinity(0, {LOAD_CORE})
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs two cores (one for the router, one for the fleet)")
    return routing_main(argv)


if __name__ == "__main__":
    sys.exit(main())
