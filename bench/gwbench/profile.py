"""Where llmgw's CPU goes: py-spy samples of the gateway under each kind of load.

For non-streaming load (wrk, as in the throughput step) and for instant streams (as in
the CPU-per-chunk step), py-spy records the gateway twice in a row under the same load:
once as collapsed stacks (`profile-KIND.txt`, which speedscope and inferno read too) and
once as a flame graph (`profile-KIND.svg`). From the stacks, `profile.md` lists the
functions that cost the most, by own time and including what they call.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .load import streams
from .procs import LOAD_CORE
from .servers import INSTANT_MODEL, STATIC_MODEL
from .steps import NONSTREAM_CONNECTIONS, STREAM_CONCURRENCY, Bench

SECONDS = 12
RATE = 200  # samples a second
TOP = 25
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


def profile(bench: Bench, py_spy: str, results: Path) -> None:
    assert bench.wrk is not None
    wrk = bench.wrk
    sections = []
    gateway = bench.targets["static"]["llmgw"]

    def post(seconds: float) -> Any:
        assert wrk is not None
        return wrk.post(
            gateway.url, key=gateway.key, model=STATIC_MODEL, connections=NONSTREAM_CONNECTIONS,
            seconds=seconds, max_requests=10**7,
        )  # fmt: skip

    def stream(seconds: float) -> Any:
        return streams(
            gateway.url, key=gateway.key, model=INSTANT_MODEL, concurrency=STREAM_CONCURRENCY,
            count=10**6, seconds=seconds,
        )  # fmt: skip

    for kind, load in (("nonstream", post), ("stream", stream)):
        bench.log(f"profiling llmgw under {kind} load ({2 * SECONDS} s)")
        raw, svg = results / f"profile-{kind}.txt", results / f"profile-{kind}.svg"
        _record_under_load(py_spy, gateway.proc.pid, load, [(raw, "raw"), (svg, "flamegraph")])
        sections.append(f"## {kind}\n\n{top_costs(raw)}")
    (results / "profile.md").write_text(
        "# llmgw profile (py-spy --native, "
        f"{RATE} samples/s, {SECONDS} s each)\n\n" + "\n\n".join(sections) + "\n"
    )
    bench.log(f"profiles written to {results}/profile-*.svg and profile.md")


def _record_under_load(
    py_spy: str, pid: int, load: Callable[[float], Any], outputs: list[tuple[Path, str]]
) -> None:
    """Keep the load going while py-spy records each output in turn."""
    seconds = SECONDS * len(outputs) + 3
    worker = threading.Thread(target=load, args=(seconds,), daemon=True)
    worker.start()
    for path, fmt in outputs:
        argv = [
            "taskset", "-c", str(LOAD_CORE), py_spy, "record", "--pid", str(pid), "--native",
            "--rate", str(RATE), "--duration", str(SECONDS), "--format", fmt, "-o", str(path),
        ]  # fmt: skip
        subprocess.run(argv, capture_output=True, timeout=SECONDS + 60, check=True)
    worker.join(timeout=seconds + 90)


# A sample in one of these is a thread waiting, not working (the loop in epoll, the
# aiosqlite thread on its queue, either one waiting for the GIL).
_IDLE = re.compile(r"^(epoll_p?wait|_queue_SimpleQueue_get|take_gil|uv__io_poll) ")
# Frames every working sample passes through: left out of the "total" table.
_ROOT = re.compile(
    r"\((click/|cli/|asyncio/(runners|events|base_events)\.py|threading\.py|uvloop/"
    r"|<frozen|llmgw:)|^<module> "
)


def top_costs(raw: Path) -> str:
    """Markdown tables of where the working samples went.

    Each sample is charged to its innermost Python frame (so time in C, syscalls
    included, counts against the Python line that called it): by line, by file, and by
    function including what it calls.
    """
    own: Counter[str] = Counter()
    files: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if any(_IDLE.match(f) for f in frames):
            idle += n
            continue
        python = [f for f in frames if ".py:" in f]
        if not python:
            continue
        total += n
        own[python[-1]] += n
        files[python[-1].rpartition("(")[2].partition(":")[0]] += n
        for function in {_function(f) for f in python}:
            if not _ROOT.search(function):
                under[function] += n
    if not total:
        return "(no samples)"

    def table(counts: Counter[str], title: str, top: int = TOP) -> str:
        rows = [f"| {title} | share |", "|---|---:|"]
        rows += [f"| `{f}` | {n / total:.1%} |" for f, n in counts.most_common(top)]
        return "\n".join(rows)

    return (
        f"{total:,} working samples ({idle:,} idle left out); shares of the working ones\n\n"
        + table(own, "own time, by innermost Python line")
        + "\n\n"
        + table(files, "own time, by file", 15)
        + "\n\n"
        + table(under, "total time (the function and what it calls)")
    )


def _function(frame: str) -> str:
    """`func (pkg/mod.py:12)` -> `func (pkg/mod.py)`: all lines of a function together."""
    return re.sub(r":\d+\)$", ")", frame)


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    where = match["where"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{match['func']} ({where})"
