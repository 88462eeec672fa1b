"""The client of the limits' Redis: how it connects, and its errors of reach as ours.

Shared by the limiter (`redis`, `leases`) and the login throttle (`redis_login`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import LimiterUnavailable

# Seconds to connect to Redis, to wait for an answer, and to wait for a free connection,
# unless [limits] redis_timeout says otherwise: a script takes well under a millisecond,
# so a Redis that has not answered in this long is treated as gone.
SOCKET_TIMEOUT = 0.5
# Connections to Redis at most; beyond, requests queue for one (a burst of thousands must
# not open thousands of connections, nor be refused for want of one).
MAX_CONNECTIONS = 64


def connect(url: str, timeout: float = SOCKET_TIMEOUT) -> redis.asyncio.Redis:
    """A client for the limiter's Redis at `url` (no I/O until its first call). Nothing
    is retried: a script sent again after a lost answer could take twice."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.asyncio.Redis.from_pool(pool)


@contextlib.contextmanager
def reach() -> Iterator[None]:
    """Redis's errors of reach as ours; any other (a script error, say) stays loud."""
    try:
        yield
    except (
        redis.exceptions.ConnectionError,  # refused, reset, loading, authentication
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,  # a replica, after a failover
    ) as exc:
        raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc
