"""Usage rollups: hourly aggregates of the ledger, for fast statistics (being built)."""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from .ledger import UsageRecord


async def add(db: aiosqlite.Connection, records: Sequence[UsageRecord]) -> None:
    """Fold `records` into the rollups; called inside the ledger's transaction."""
