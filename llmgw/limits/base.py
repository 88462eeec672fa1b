"""The limiter interface: what a request asks of its key's limits, and what it is told.

A request is *admitted* once its body has been read and checked (a 400 or 403 costs
nothing): `Limiter.admit` takes one request from every window of the key, all or
nothing, and yields a `Reservation` that the request holds until it ends. A refused
request raises `LimitExceeded`, which names the limit and carries the headers to send.
`Reservation.refund` gives the request back when no upstream ever saw it; leaving the
`admit` block releases whatever the reservation holds, exactly once, however the
request ended. Backends: `memory` (one process; the default) and `redis` (shared by
the replicas; `failover` applies the policy for when Redis cannot be reached).

Both backends keep token buckets of the same arithmetic (`window_state`, `seconds_until`
below), so the same state gives the same `Decision` and headers from either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from ..keys import ApiKey

MINUTE = 60.0
HOUR = 3600.0
# Refill is floating-point arithmetic: 6 s at 10/min must count as one whole token.
# (limits/buckets.lua holds the same figure.)
EPSILON = 1e-9


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


@dataclass(frozen=True, slots=True)
class WindowState:
    limit: int
    remaining: int
    reset: float  # seconds until the window is full again


def seconds_until(wanted: float, tokens: float, capacity: float, window: float) -> float:
    """Seconds until a bucket holding `tokens` of `capacity` (refilled in `window`
    seconds from empty) holds `wanted`."""
    return max(0.0, (wanted - EPSILON - tokens) / (capacity / window))


def window_state(tokens: float, capacity: float, window: float) -> WindowState:
    return WindowState(
        limit=int(capacity),
        remaining=max(0, math.floor(tokens + EPSILON)),
        reset=seconds_until(capacity, tokens, capacity, window),
    )


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


class LimitExceeded(Exception):
    """The request was refused: `kind` names the limit (OpenAI's `error.type` for it),
    the message says which window and when to try again."""

    def __init__(self, decision: Decision, limits: RequestLimits) -> None:
        window, limit = (
            ("minute", limits.per_minute)
            if decision.minute.remaining == 0
            else ("hour", limits.per_hour)
        )
        super().__init__(
            f"Rate limit reached for requests per {window}: limit {limit}. "
            f"Please try again in {math.ceil(decision.retry_after)}s."
        )
        self.kind = "requests"
        self.decision = decision

    def headers(self) -> Mapping[str, str]:
        return self.decision.headers()


class LimiterUnavailable(Exception):
    """The shared limits cannot be reached (Redis refused, reset or timed out), and the
    policy is to refuse rather than decide alone: a 503 `limiter_unavailable`."""


@dataclass(frozen=True, slots=True)
class LimiterStatus:
    """What `/health` and `/metrics` say of the limits."""

    backend: Literal["memory", "redis"]
    shared: bool  # decisions are taken together with the other replicas (in Redis) now
    error: str | None  # why not, while Redis cannot be reached
    local_decisions: int  # admissions this replica decided alone because Redis was away


class Reservation(Protocol):
    """What one admitted request holds of its key's limits until it ends."""

    decision: Decision

    async def refund(self) -> Decision:
        """Give the request back (no upstream ever saw it): the key's windows after."""


class Limiter(Protocol):
    def admit(self, key_id: int, limits: RequestLimits) -> AbstractAsyncContextManager[Reservation]:
        """Take one request from every window of the key, or none and raise
        `LimitExceeded` (or `LimiterUnavailable`, when nothing may decide); the
        reservation is released when the block is left."""

    async def windows(self, key_id: int, limits: RequestLimits) -> Decision:
        """The key's windows now, without taking anything (or `LimiterUnavailable`)."""

    async def forget(self, key_id: int) -> None:
        """Drop the key's state (the key was deleted)."""

    def status(self) -> LimiterStatus:
        """Where decisions are taken now, without asking anything."""

    async def close(self) -> None:
        """Let go of connections (at shutdown)."""
