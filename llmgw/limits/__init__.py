"""Per-key limits: the interface (`base`) and its backends (`memory`, `redis`; the
latter imported from `limits.redis` by who needs it)."""

from __future__ import annotations

from .base import (
    Decision,
    Limiter,
    LimiterStatus,
    LimiterUnavailable,
    LimitExceeded,
    RequestLimits,
    Reservation,
    WindowState,
    format_duration,
    limits_for,
)
from .memory import MemoryLimiter

__all__ = [
    "Decision",
    "LimitExceeded",
    "Limiter",
    "LimiterStatus",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RequestLimits",
    "Reservation",
    "WindowState",
    "format_duration",
    "limits_for",
]
