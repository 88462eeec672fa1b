"""The one table: each target of the issue with its figure and whether it was met.

Rows without a target are context (the peers' figures, what a ratio was computed
from). The same table goes to the terminal as aligned text and to the results file as
markdown, with the machine and versions above it.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PASS, MISS, INFO, FAILED = "pass", "MISS", "info", "FAILED"


@dataclass
class Row:
    step: str
    what: str
    target: str
    figure: str
    verdict: str  # pass | MISS | info | FAILED (the step itself did not run)
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def add(
        self, step: str, what: str, target: str, figure: str, verdict: str, note: str = ""
    ) -> None:
        self.rows.append(Row(step, what, target, figure, verdict, note))

    def check(
        self, step: str, what: str, target: str, figure: str, met: bool, note: str = ""
    ) -> None:
        self.add(step, what, target, figure, PASS if met else MISS, note)

    def info(self, step: str, what: str, figure: str, note: str = "") -> None:
        self.add(step, what, "", figure, INFO, note)

    def failed(self, step: str, error: str) -> None:
        self.add(step, "step failed", "", error.splitlines()[0][:120] if error else "?", FAILED)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{model}, {os.cpu_count()} cores, {int(mem) / 1024**2:.0f} GiB, Linux {platform.release()}"
    )


def versions(litellm: str | None) -> dict[str, str]:
    out = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in ("aiohttp", "uvloop", "orjson"):
        out[name] = metadata.version(name)
    if litellm:
        out["litellm"] = litellm
    return out


def header(report: Report) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    v = ", ".join(f"{k} {val}" for k, val in report.versions.items())
    return f"{stamp}; {machine()}\n{v}"


COLUMNS = ("step", "what", "target", "figure", "result", "disturbance")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.step, row.what, row.target, row.figure, row.verdict, row.note)


def text_table(report: Report) -> str:
    table = [COLUMNS, *(_cells(r) for r in report.rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(report: Report) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report.rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    return "\n".join(lines)


def summary(report: Report) -> str:
    counted = [r.verdict for r in report.rows if r.verdict in (PASS, MISS, FAILED)]
    return f"{counted.count(PASS)} targets met, {counted.count(MISS)} missed" + (
        f", {counted.count(FAILED)} failed to run" if FAILED in counted else ""
    )
