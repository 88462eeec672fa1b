"""The routing bench's tables: every run side by side, then the issue's targets.

One row a run: the workload, the offered load, the target; time to the first token
(p50, p90, p99), output tokens a second, the fleet's prefix-cache hit rate, the load
spread (max over mean of the requests each server answered), errors, and the router's
CPU per request. The targets are checked on these figures and on the decision
micro-benchmark's, and reported met or missed, never asserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..report import Report
from .runs import Run

COLUMNS = (
    "workload", "load", "target", "offered req/s", "TTFT p50 ms", "TTFT p90 ms",
    "TTFT p99 ms", "output tok/s", "cache hits", "spread", "errors", "router CPU/req",
    "waited", "load core ours/foreign",
)  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def cells(run: Run) -> tuple[str, ...]:
    f = run.figures
    ttft = f["ttft_ms"]
    hit = run.hit_rate
    return (
        run.workload, f"{run.load:.0%}", run.target.name, f"{f['offered_per_s']:.1f}",
        _ms(ttft["p50"]), _ms(ttft["p90"]), _ms(ttft["p99"]),
        f"{f['output_tokens_per_s']:,.0f}", "-" if hit is None else f"{hit:.1%}",
        f"{run.spread:.2f}", str(f["errors"]), f"{run.cpu_ms_per_request:.2f} ms",
        f"{run.waited:.0%}", f"{run.load_core_ours:.0%} / {run.disturbance:.0%}",
    )  # fmt: skip


def text_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    table = [tuple(columns), *(tuple(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _find(runs: Sequence[Run], workload: str, load: float, target: str) -> Run | None:
    for run in runs:
        if run.workload == workload and abs(run.load - load) < 1e-9 and run.target.name == target:
            return run
    return None


def _p90(run: Run) -> float | None:
    value = run.figures["ttft_ms"]["p90"]
    return None if value is None else float(value)


def _tput(run: Run) -> float:
    return float(run.figures["output_tokens_per_s"])


def check_targets(
    report: Report, runs: Sequence[Run], decision: dict[str, Any] | None, load: float = 0.8
) -> None:
    """The issue's targets, each met or missed, from the runs at `load`."""
    affinity = "llmgw prefix-affinity"
    heavy = "prefix-heavy"
    pa = _find(runs, heavy, load, affinity)
    ll = _find(runs, heavy, load, "llmgw least-loaded")
    ca = _find(runs, heavy, load, "vllm-router cache_aware")
    step = f"{heavy} {load:.0%}"
    if pa is not None and ll is not None and _p90(pa) is not None and _p90(ll) is not None:
        a, b = _p90(pa) or 0.0, _p90(ll) or 0.0
        report.check(
            step, "prefix-affinity TTFT p90 / least-loaded's", "≤ 0.5",
            f"{a / b:.2f} ({a:,.0f} / {b:,.0f} ms)", a <= 0.5 * b,
        )  # fmt: skip
        report.check(
            step, "prefix-affinity output tok/s vs least-loaded's", "≥",
            f"{_tput(pa):,.0f} vs {_tput(ll):,.0f} ({_tput(pa) / _tput(ll) - 1:+.1%})",
            _tput(pa) >= _tput(ll),
        )  # fmt: skip
    if pa is not None and ca is not None and _p90(pa) is not None and _p90(ca) is not None:
        a, c = _p90(pa) or 0.0, _p90(ca) or 0.0
        report.check(
            step, "prefix-affinity TTFT p90 vs vllm-router cache_aware's", "≤",
            f"{a:,.0f} vs {c:,.0f} ms ({a / c:.2f}×)", a <= c,
        )  # fmt: skip
        report.check(
            step, "prefix-affinity output tok/s vs cache_aware's", "≥",
            f"{_tput(pa):,.0f} vs {_tput(ca):,.0f} ({_tput(pa) / _tput(ca) - 1:+.1%})",
            _tput(pa) >= _tput(ca),
        )  # fmt: skip
    pa = _find(runs, "no-sharing", load, affinity)
    ll = _find(runs, "no-sharing", load, "llmgw least-loaded")
    step = f"no-sharing {load:.0%}"
    if pa is not None and ll is not None and _p90(pa) is not None and _p90(ll) is not None:
        a, b = _p90(pa) or 0.0, _p90(ll) or 0.0
        report.check(
            step, "prefix-affinity TTFT p90 vs least-loaded's", "within 5 %",
            f"{a:,.0f} vs {b:,.0f} ms ({a / b - 1:+.1%})", a <= 1.05 * b,
        )  # fmt: skip
        ratio = _tput(pa) / _tput(ll)
        report.check(
            step, "prefix-affinity output tok/s vs least-loaded's", "within 5 %",
            f"{_tput(pa):,.0f} vs {_tput(ll):,.0f} ({ratio - 1:+.1%})", ratio >= 0.95,
        )  # fmt: skip
    if decision is not None:
        for name, figures in decision["policies"].items():
            us, whole = figures["key_and_order_us"], figures["candidates_us"]
            report.check(
                "decision", f"{name}: CPU a decision (key + order)", "≤ 20 µs",
                f"{us:.1f} µs (whole candidates(): {whole:.1f} µs)", us <= 20.0,
            )  # fmt: skip
    for run in runs:
        if run.figures["errors"]:
            samples = "; ".join(run.figures["error_samples"])[:100]
            report.check(
                f"{run.workload} {run.load:.0%}", f"{run.target.name}: errors", "0",
                f"{run.figures['errors']} ({samples})", False,
            )  # fmt: skip
