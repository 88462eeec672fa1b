"""Processes the bench starts, and what `/proc` says about them.

Every server runs in a process group of its own, pinned to a core with `taskset`, and
dies with the bench: `Processes.stop_all` (called on exit and on SIGTERM/SIGINT/SIGHUP)
signals each group, and `PR_SET_PDEATHSIG` kills a server whose bench was killed
outright. CPU time is read from `/proc/PID/stat` (utime + stime, every thread
included) summed over the process tree; memory from `/proc/PID/status` (VmRSS, VmHWM).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
GATEWAY_CORE = 0  # the process under test
LOAD_CORE = 1  # load generators, upstreams and the bench itself
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    core: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """The servers of one bench run, stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int,
        env: dict[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["taskset", "-c", str(core), *argv],  # taskset execs: same pid
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**(os.environ if inherit_env else {}), **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the bench has no threads: safe
            )
        proc = Proc(name, popen, log, core)
        self._procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self._procs if p.alive()]

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        if proc in self._procs:
            self._procs.remove(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc, grace=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- /proc ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces


def tree(pid: int) -> list[int]:
    """`pid` and every descendant alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes (all threads), in seconds."""
    ticks = 0
    for pid in pids:
        if fields := _stat_fields(pid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def tree_cpu(pid: int) -> float:
    return cpu_seconds(tree(pid))


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the process tree in MB (10^6 bytes), summed."""
    rss = hwm = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return rss * 1024 / 1e6, hwm * 1024 / 1e6


def core_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy seconds, steal seconds) since boot, from /proc/stat.

    Busy is user + nice + system + irq + softirq. This kernel accounts CPU time by tick
    (no IRQ time accounting), so a task's stime already holds the softirq work done
    in its context (loopback TCP mostly): counting softirq as busy keeps the two
    comparable.
    """
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
            out[int(name[3:])] = ((user + nice + system + irq + softirq) / TICK, steal / TICK)
    return out
