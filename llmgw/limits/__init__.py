"""Per-key limits: the interface (`base`) and its backends (`memory`)."""

from .base import (
    Decision,
    Limiter,
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
    "MemoryLimiter",
    "RequestLimits",
    "Reservation",
    "WindowState",
    "format_duration",
    "limits_for",
]
