"""Live statistics: per-second figures of the last minutes, kept in memory (being built)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .ledger import UsageRecord


class LiveStats:
    def __init__(self, window: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock

    def observe(self, record: UsageRecord) -> None:
        """A finished request (its ledger record)."""

    def stream_opened(self, key_id: int) -> None:
        """A stream began relaying for `key_id`."""

    def stream_closed(self, key_id: int) -> None:
        """That stream ended, however it ended."""

    def snapshot(self, seconds: int) -> dict[str, Any]:
        return {}
