"""Per-key rate limits: token buckets for requests per minute and per hour.

Each bucket holds up to `limit` tokens and refills continuously at `limit / window`, so
a key can burst to its limit and then proceeds at the average rate. A request takes one
token from every bucket or from none (a refused request consumes nothing). The clock
is injected so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings
from .keys import ApiKey

MINUTE = 60.0
HOUR = 3600.0
# Refill is floating-point arithmetic: 6 s at 10/min must count as one whole token.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RequestLimits:
    per_minute: int
    per_hour: int


def limits_for(key: ApiKey, settings: Settings) -> RequestLimits:
    """The key's own limits where it has them, else its tier's (else the default tier's,
    should its tier have been removed from the config)."""
    tier = settings.tiers.get(key.tier) or settings.tiers[settings.admin.default_tier]
    return RequestLimits(
        key.requests_per_minute or tier.requests_per_minute,
        key.requests_per_hour or tier.requests_per_hour,
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
        return max(0.0, (tokens - _EPSILON - self.tokens) / self.rate)

    def state(self) -> WindowState:
        return WindowState(
            limit=int(self.capacity),
            remaining=max(0, math.floor(self.tokens + _EPSILON)),
            reset=self.seconds_until(self.capacity),
        )


@dataclass(frozen=True, slots=True)
class WindowState:
    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until a request would be allowed; 0 when allowed
    minute: WindowState
    hour: WindowState

    def headers(self) -> dict[str, str]:
        """The seed's four headers and OpenAI's trio for the window closest to empty."""
        binding = self.hour if self.hour.remaining < self.minute.remaining else self.minute
        headers = {
            "X-RateLimit-Limit-Minute": str(self.minute.limit),
            "X-RateLimit-Remaining-Minute": str(self.minute.remaining),
            "X-RateLimit-Limit-Hour": str(self.hour.limit),
            "X-RateLimit-Remaining-Hour": str(self.hour.remaining),
            "x-ratelimit-limit-requests": str(binding.limit),
            "x-ratelimit-remaining-requests": str(binding.remaining),
            "x-ratelimit-reset-requests": format_duration(binding.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return headers


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


class RateLimiter:
    """The buckets of every key that has made a request since start."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[_Bucket, _Bucket]] = {}

    def acquire(self, key_id: int, limits: RequestLimits) -> Decision:
        now = self._clock()
        minute, hour = self._buckets_for(key_id, limits, now)
        minute.refill(now)
        hour.refill(now)
        allowed = minute.tokens >= 1 - _EPSILON and hour.tokens >= 1 - _EPSILON
        if allowed:
            minute.tokens -= 1
            hour.tokens -= 1
            retry_after = 0.0
        else:
            retry_after = max(minute.seconds_until(1), hour.seconds_until(1))
        return Decision(allowed, retry_after, minute.state(), hour.state())

    def peek(self, key_id: int, limits: RequestLimits) -> tuple[WindowState, WindowState]:
        """The key's minute and hour windows now, without taking anything."""
        now = self._clock()
        minute, hour = self._buckets_for(key_id, limits, now)
        minute.refill(now)
        hour.refill(now)
        return minute.state(), hour.state()

    def refund(self, key_id: int) -> None:
        """Give back the request a key was charged for but the upstream never served."""
        for bucket in self._buckets.get(key_id, ()):
            bucket.tokens = min(bucket.capacity, bucket.tokens + 1)

    def forget(self, key_id: int) -> None:
        self._buckets.pop(key_id, None)

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
