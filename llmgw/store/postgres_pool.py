"""The connection to PostgreSQL: the pool, the database's name as messages give it, and
the one place that turns asyncpg's errors into the store's.

A database that cannot be reached (the server down or restarting, the connection cut,
the pool closed, too many connections) is `StoreUnavailable`, naming the database and
what went wrong, so an admin change is refused with a sentence an operator can act on
and the ledger keeps its records for later. A record the database refuses for what it
holds (a number out of range, a broken constraint, a NUL in text) is `RecordError`: the
ledger sets it aside rather than retry it for ever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..ledger import RecordError
from .base import StoreError, StoreUnavailable

# A connection of its own, or one of the pool's.
Connection = asyncpg.Connection | PoolConnectionProxy
# Seconds to open a connection before the database counts as unreachable (asyncpg's
# default is 60: a change or a read would hang that long).
CONNECT_TIMEOUT = 5.0
POOL_SIZE = 10

# The database is away, or cannot take this now: try again later.
_UNAVAILABLE = (
    OSError,  # refused, reset, no route
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection is gone
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, too many clients
    asyncpg.InterfaceError,  # the pool is closed, the connection was lost
)
# What the records themselves are to blame for: writing them again cannot succeed.
_RECORD_ERRORS = (
    asyncpg.DataError,  # class 22: out of range, NUL in text (and asyncpg's own encoding)
    asyncpg.IntegrityConstraintViolationError,  # class 23: CHECK, NOT NULL
    OverflowError,
    UnicodeEncodeError,
)


def describe(url: str) -> str:
    """The database as messages and logs name it: never the password."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or parts.username or "postgres"
    host = parts.hostname or "localhost"
    where = f"{host}:{parts.port}" if parts.port else host
    return f"PostgreSQL database {database!r} at {where}"


@contextlib.contextmanager
def unavailable(name: str) -> Iterator[None]:
    """asyncpg's errors of an unreachable database as `StoreUnavailable` naming it."""
    try:
        yield
    except StoreError:
        raise
    except _UNAVAILABLE as exc:
        raise _unreachable(name, exc) from exc


@contextlib.contextmanager
def refused_records() -> Iterator[None]:
    """A batch the database refuses for what it holds, as `RecordError`."""
    try:
        yield
    except _RECORD_ERRORS as exc:
        raise RecordError(f"{type(exc).__name__}: {exc}") from exc


async def open_pool(url: str, name: str) -> asyncpg.Pool:
    """A pool whose first connection is open (so a wrong URL stops start-up at once)."""
    try:
        return await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT
        )
    except _UNAVAILABLE as exc:
        raise _unreachable(name, exc) from exc
    except asyncpg.PostgresError as exc:  # a wrong password, no such database
        raise StoreError(f"cannot open the {name}: {exc}") from None


def _unreachable(name: str, exc: BaseException) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(
        f"the {name} cannot be reached ({detail}): changes are refused until it is back, "
        "usage records wait in memory"
    )
