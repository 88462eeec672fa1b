"""Time, injected: `create_app(settings, clock=...)` hands one clock to everything that
asks the time, so tests move it instead of waiting for it.

Two readings: `wall` (epoch seconds: key expiry, admin tokens, ledger timestamps, usage
windows) and `monotonic` (never jumps: rate limits, the login throttle).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real time."""

    __slots__ = ()

    @staticmethod
    def wall() -> float:
        return time.time()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()
