"""The store: every byte of SQL lives under here (`base` is the interface, `sqlite*` the
SQLite implementation, `postgres*` the PostgreSQL one); `open_store` opens the one the
settings name."""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from .base import (
    Actor,
    AdminUser,
    AlreadyExists,
    DatabaseGone,
    KeyChanges,
    Store,
    StoreError,
    StoreHealth,
    StoreUnavailable,
    Transaction,
    Unsupported,
    UserBudgetChange,
)
from .postgres import PostgresStore
from .sqlite import SqliteStore

__all__ = [
    "Actor",
    "AdminUser",
    "AlreadyExists",
    "DatabaseGone",
    "KeyChanges",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
    "Transaction",
    "Unsupported",
    "UserBudgetChange",
    "open_store",
]


async def open_store(settings: Settings, clock: Callable[[], float]) -> Store:
    if url := settings.postgres_url:
        return await PostgresStore.open(url, clock)
    return await SqliteStore.open(settings.database_path, clock)
