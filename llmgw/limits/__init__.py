"""Per-key limits: the interface (`base`), its backends (`memory`, `redis`), the policy
for a Redis that cannot be reached (`failover`), and `open_limiter`, which builds the
one the settings name."""

from __future__ import annotations

import urllib.parse

from ..clock import Clock
from ..config import Settings
from .base import (
    NOTHING,
    Budget,
    Decision,
    Demand,
    Limiter,
    LimiterStatus,
    LimiterUnavailable,
    LimitExceeded,
    Limits,
    Reservation,
    SpentTokens,
    WindowState,
    format_duration,
    limits_for,
    nothing_spent,
    tier_of,
)
from .memory import MemoryLimiter

__all__ = [
    "NOTHING",
    "Budget",
    "Decision",
    "Demand",
    "LimitExceeded",
    "Limiter",
    "LimiterStatus",
    "LimiterUnavailable",
    "Limits",
    "MemoryLimiter",
    "Reservation",
    "SpentTokens",
    "WindowState",
    "format_duration",
    "limits_for",
    "nothing_spent",
    "open_limiter",
    "tier_of",
]


async def open_limiter(
    settings: Settings, clock: Clock, spent: SpentTokens = nothing_spent
) -> Limiter:
    """The limiter of [limits]: memory, or Redis with the memory one (on `clock`) to
    fall back on. `spent` reads a budget's tokens from the ledger. Redis is asked once,
    so a Redis already gone is logged at start."""
    local = MemoryLimiter(clock, spent)
    config = settings.limits
    if config.backend == "memory":
        return local
    # Here, not at the top: the redis package costs every `llmgw` command 50 ms to import.
    from .failover import FailoverLimiter
    from .redis import RedisLimiter

    shared = RedisLimiter.from_url(
        config.redis_url, timeout=config.redis_timeout, clock=clock, spent=spent
    )
    limiter = FailoverLimiter(shared, local, config.on_redis_error, shown(config.redis_url))
    await limiter.start()
    return limiter


def shown(url: str) -> str:
    """`url` as the log may show it: no user, no password (nor a query, which may hold
    one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
