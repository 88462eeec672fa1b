"""Measuring one step: the CPU of the process under test, and whether anything else ran.

Each step's load runs inside a `Meter`, which reads `/proc/stat` (busy and steal time of
each core) and the CPU time of every process the bench owns before and after. What the
cores were busy with beyond the bench's own processes is *foreign* time: other jobs on
the machine. A step whose foreign plus steal time on either core exceeds
`max_disturbance` of that core's wall time is disturbed, and `attempts` runs it again
(after waiting for a quiet moment), keeping the least disturbed try.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .procs import GATEWAY_CORE, LOAD_CORE, Proc, Processes, core_times, tree_cpu

T = TypeVar("T")


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    wall: float = 0.0
    cpu: float = 0.0  # seconds of CPU of the process under test (its tree)
    foreign: dict[int, float] = field(default_factory=dict)  # per core, seconds
    steal: dict[int, float] = field(default_factory=dict)
    cores: tuple[int, ...] = (GATEWAY_CORE, LOAD_CORE)  # those the step's work ran on

    @property
    def disturbance(self) -> float:
        """The worst core's foreign + steal time, as a fraction of the wall time."""
        if self.wall <= 0:
            return 0.0
        return max(
            (max(0.0, self.foreign.get(c, 0.0)) + self.steal.get(c, 0.0)) / self.wall
            for c in self.cores
        )


class Meter:
    """`with Meter(procs, put) as m: ...` then `m.sample`.

    The gateway core should run the process under test and nothing else, so all other
    work there is foreign, the bench's idle servers included. On the load core, the
    bench's own processes are expected: its servers pinned there, the bench itself and
    its finished children (the load generators). Children run on `children_core`: the
    ledger and limiter steps run their test on the gateway core as a child process.
    """

    def __init__(
        self,
        procs: Processes,
        put: Proc | None,
        children_core: int = LOAD_CORE,
        cores: tuple[int, ...] | None = None,
    ) -> None:
        self._procs = procs
        self._put = put
        self._children_core = children_core
        self.sample = Sample()
        if cores is not None:
            self.sample.cores = cores
        elif put is None:  # the work runs on the children's core only
            self.sample.cores = (children_core,)

    def _snapshot(self) -> tuple[float, dict[int, tuple[float, float]], dict[int, float], float]:
        ours = {GATEWAY_CORE: 0.0, LOAD_CORE: 0.0}
        put = 0.0
        for proc in self._procs.live():
            if proc is self._put:
                put = tree_cpu(proc.pid)
                ours[GATEWAY_CORE] += put
            elif proc.core == LOAD_CORE:
                ours[LOAD_CORE] += tree_cpu(proc.pid)
        ours[LOAD_CORE] += _rusage(resource.RUSAGE_SELF)
        ours[self._children_core] += _rusage(resource.RUSAGE_CHILDREN)
        return time.monotonic(), core_times(), ours, put

    def __enter__(self) -> Meter:
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        t1, cores1, ours1, put1 = self._snapshot()
        t0, cores0, ours0, put0 = self._before
        sample = self.sample
        sample.wall, sample.cpu = t1 - t0, put1 - put0
        for core in cores1:
            busy = cores1[core][0] - cores0[core][0]
            sample.foreign[core] = busy - (ours1.get(core, 0.0) - ours0.get(core, 0.0))
            sample.steal[core] = cores1[core][1] - cores0[core][1]


@dataclass
class Attempted(Generic[T]):
    result: T
    sample: Sample
    attempts: int
    disturbed: bool

    def facts(self) -> dict[str, object]:
        """The measurement itself, for the JSON results."""
        s = self.sample
        return {
            "wall_s": s.wall, "cpu_s": s.cpu, "foreign_s": s.foreign, "steal_s": s.steal,
            "disturbance": s.disturbance, "attempts": self.attempts, "disturbed": self.disturbed,
        }  # fmt: skip

    def note(self) -> str:
        d = f"foreign load {self.sample.disturbance:.0%}"
        tries = f"{self.attempts} {'try' if self.attempts == 1 else 'tries'}"
        if self.disturbed:
            return f"DISTURBED ({d}, {tries})"
        return d + (f", {tries}" if self.attempts > 1 else "")


def joint_note(*tries: Attempted[object]) -> str:
    """The note of a figure computed from several measurements."""
    if any(t.disturbed for t in tries):
        return "DISTURBED (an input)"
    return f"foreign load ≤ {max(t.sample.disturbance for t in tries):.0%}"


@dataclass
class Policy:
    max_disturbance: float = 0.05
    attempts: int = 3
    quiet_wait: float = 10.0  # seconds to wait for a quiet moment before a try
    # Seconds the whole run may spend on waiting and rerunning; then each step runs once.
    retry_budget: float = 300.0
    log: Callable[[str], None] = print
    spent: float = 0.0

    def can_retry(self) -> bool:
        return self.spent < self.retry_budget


def wait_for_quiet(procs: Processes, policy: Policy) -> float:
    """Wait (at most `quiet_wait` s) for a half second without foreign load; its level."""
    began = time.monotonic()
    try:
        while True:
            with Meter(procs, None, cores=(GATEWAY_CORE, LOAD_CORE)) as meter:
                time.sleep(0.5)
            level = meter.sample.disturbance
            waited = time.monotonic() - began
            if level <= policy.max_disturbance or waited > policy.quiet_wait:
                return level
            if not policy.can_retry():
                return level
    finally:
        policy.spent += max(0.0, time.monotonic() - began - 0.5)


def attempt(
    procs: Processes,
    policy: Policy,
    label: str,
    put: Proc | None,
    run: Callable[[], T],
    *,
    children_core: int = LOAD_CORE,
) -> Attempted[T]:
    """Run `run` under a Meter until it is undisturbed, at most `policy.attempts` times."""
    best: Attempted[T] | None = None
    for n in range(1, policy.attempts + 1):
        wait_for_quiet(procs, policy)
        with Meter(procs, put, children_core) as meter:
            result = run()
        sample = meter.sample
        if n > 1:
            policy.spent += sample.wall
        disturbed = sample.disturbance > policy.max_disturbance
        if best is None or sample.disturbance < best.sample.disturbance:
            best = Attempted(result, sample, n, disturbed)
        best.attempts = n
        if not disturbed:
            break
        if n == policy.attempts or not policy.can_retry():
            policy.log(f"  {label}: disturbed ({sample.disturbance:.0%} foreign load), kept")
            break
        policy.log(f"  {label}: disturbed ({sample.disturbance:.0%} foreign load), again")
    assert best is not None
    return best
