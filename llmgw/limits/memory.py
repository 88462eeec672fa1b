"""The limiter of one process: token buckets in a dict, for requests per minute and hour.

Each bucket holds up to `limit` tokens and refills continuously at `limit / window`, so
a key can burst to its limit and then proceeds at the average rate. A request takes one
token from every bucket or from none (a refused request consumes nothing). Everything
runs on the event loop between two awaits, so a decision is atomic without a lock. The
clock is injected so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .base import (
    EPSILON,
    HOUR,
    MINUTE,
    Decision,
    LimiterStatus,
    LimitExceeded,
    RequestLimits,
    WindowState,
    seconds_until,
    window_state,
)


@dataclass(slots=True)
class _Bucket:
    capacity: float
    window: float
    tokens: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / self.window

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now

    def resize(self, capacity: float) -> None:
        # A tier change keeps what the key has used: tokens never exceed the new size.
        self.capacity = capacity
        self.tokens = min(self.tokens, capacity)

    def seconds_until(self, tokens: float) -> float:
        return seconds_until(tokens, self.tokens, self.capacity, self.window)

    def state(self) -> WindowState:
        return window_state(self.tokens, self.capacity, self.window)


class _Held:
    """A request's reservation in this process."""

    __slots__ = ("_key_id", "_limiter", "_limits", "decision")

    def __init__(
        self, limiter: MemoryLimiter, key_id: int, limits: RequestLimits, decision: Decision
    ) -> None:
        self._limiter, self._key_id, self._limits = limiter, key_id, limits
        self.decision = decision

    async def refund(self) -> Decision:
        self._limiter.refund(self._key_id)
        self.decision = self._limiter.peek(self._key_id, self._limits)
        return self.decision


class MemoryLimiter:
    """The buckets of every key that has made a request since start."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[_Bucket, _Bucket]] = {}

    @contextlib.asynccontextmanager
    async def admit(self, key_id: int, limits: RequestLimits) -> AsyncIterator[_Held]:
        decision = self.acquire(key_id, limits)
        if not decision.allowed:
            raise LimitExceeded(decision, limits)
        # Requests are all it counts so far: nothing is held that leaving must release.
        yield _Held(self, key_id, limits, decision)

    async def windows(self, key_id: int, limits: RequestLimits) -> Decision:
        return self.peek(key_id, limits)

    async def forget(self, key_id: int) -> None:
        self._buckets.pop(key_id, None)

    def status(self) -> LimiterStatus:
        return LimiterStatus(backend="memory", shared=False, error=None, local_decisions=0)

    async def close(self) -> None:
        pass

    # The synchronous core, also what the unit tests and the bench drive.

    def acquire(self, key_id: int, limits: RequestLimits) -> Decision:
        now = self._clock()
        minute, hour = self._buckets_for(key_id, limits, now)
        minute.refill(now)
        hour.refill(now)
        allowed = minute.tokens >= 1 - EPSILON and hour.tokens >= 1 - EPSILON
        if allowed:
            minute.tokens -= 1
            hour.tokens -= 1
            retry_after = 0.0
        else:
            retry_after = max(minute.seconds_until(1), hour.seconds_until(1))
        return Decision(allowed, retry_after, minute.state(), hour.state())

    def peek(self, key_id: int, limits: RequestLimits) -> Decision:
        """The key's minute and hour windows now, without taking anything."""
        now = self._clock()
        minute, hour = self._buckets_for(key_id, limits, now)
        minute.refill(now)
        hour.refill(now)
        return Decision(True, 0.0, minute.state(), hour.state())

    def refund(self, key_id: int) -> None:
        """Give back the request a key was charged for but the upstream never served."""
        for bucket in self._buckets.get(key_id, ()):
            bucket.tokens = min(bucket.capacity, bucket.tokens + 1)

    def _buckets_for(
        self, key_id: int, limits: RequestLimits, now: float
    ) -> tuple[_Bucket, _Bucket]:
        buckets = self._buckets.get(key_id)
        if buckets is None:
            buckets = (
                _Bucket(limits.per_minute, MINUTE, limits.per_minute, now),
                _Bucket(limits.per_hour, HOUR, limits.per_hour, now),
            )
            self._buckets[key_id] = buckets
        else:
            minute, hour = buckets
            if minute.capacity != limits.per_minute:
                minute.refill(now)
                minute.resize(limits.per_minute)
            if hour.capacity != limits.per_hour:
                hour.refill(now)
                hour.resize(limits.per_hour)
        return buckets
