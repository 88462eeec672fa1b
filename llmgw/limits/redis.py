"""The limits the replicas share: token buckets in Redis, each decision one Lua script.

A key's buckets (requests per minute and per hour today; the script takes any list of
capacity, window and cost, so token buckets and budgets can join) are hashes named
`llmgw:{key:ID}:requests:minute`. The hash tag `{key:ID}` puts all of one key in one
Redis Cluster slot, so one script call may touch them all. `buckets.lua` refills,
decides all-or-nothing and takes in one round trip (EVALSHA, loaded again on NOSCRIPT),
on Redis's own clock, since the replicas' clocks differ. Its answer (what each bucket
holds) becomes a `Decision` through the functions the memory limiter uses, so both give
the same headers. A bucket left alone for its window is full again and expires.

A Redis that cannot be reached (refused, reset, no answer within `SOCKET_TIMEOUT`: a dead
Redis never stalls a request for long) raises `LimiterUnavailable`; what the gateway
does then is `failover`'s policy. Nothing is retried: a script sent again after a lost
answer could take twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import (
    HOUR,
    MINUTE,
    Decision,
    LimiterStatus,
    LimiterUnavailable,
    LimitExceeded,
    RequestLimits,
    seconds_until,
    window_state,
)

# Seconds to connect to Redis, to wait for an answer, and to wait for a free connection,
# unless [limits] redis_timeout says otherwise: a script takes well under a millisecond,
# so a Redis that has not answered in this long is treated as gone.
SOCKET_TIMEOUT = 0.5
# Connections to Redis at most; beyond, requests queue for one (a burst of thousands must
# not open thousands of connections, nor be refused for want of one).
MAX_CONNECTIONS = 64
SCRIPT = (resources.files(__package__) / "buckets.lua").read_text(encoding="utf-8")


def connect(url: str, timeout: float = SOCKET_TIMEOUT) -> redis.asyncio.Redis:
    """A client for the limiter's Redis at `url` (no I/O until its first call)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.asyncio.Redis.from_pool(pool)


@dataclass(frozen=True, slots=True)
class _Bucket:
    name: str
    capacity: int
    window: float  # seconds to refill from empty
    cost: int = 1  # what one request takes


def _buckets(limits: RequestLimits) -> tuple[_Bucket, _Bucket]:
    # Decision's order: the minute first, the hour second.
    return (
        _Bucket("requests:minute", limits.per_minute, MINUTE),
        _Bucket("requests:hour", limits.per_hour, HOUR),
    )


_BUCKET_NAMES = tuple(b.name for b in _buckets(RequestLimits(1, 1)))


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


class _Held:
    """A request's reservation in Redis."""

    __slots__ = ("_key_id", "_limiter", "_limits", "decision")

    def __init__(
        self, limiter: RedisLimiter, key_id: int, limits: RequestLimits, decision: Decision
    ) -> None:
        self._limiter, self._key_id, self._limits = limiter, key_id, limits
        self.decision = decision

    async def refund(self) -> Decision:
        self.decision = await self._limiter.run("refund", self._key_id, self._limits)
        return self.decision


class RedisLimiter:
    """The buckets of every key, in the Redis at the other end of `client`."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = "llmgw") -> None:
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._prefix = prefix

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "llmgw", timeout: float = SOCKET_TIMEOUT
    ) -> RedisLimiter:
        """A limiter with a client of its own (`connect`)."""
        return cls(connect(url, timeout), prefix)

    @contextlib.asynccontextmanager
    async def admit(self, key_id: int, limits: RequestLimits) -> AsyncIterator[_Held]:
        decision = await self.run("take", key_id, limits)
        if not decision.allowed:
            raise LimitExceeded(decision, limits)
        # Requests are all it counts so far: nothing is held that leaving must release.
        yield _Held(self, key_id, limits, decision)

    async def windows(self, key_id: int, limits: RequestLimits) -> Decision:
        return await self.run("peek", key_id, limits)

    async def forget(self, key_id: int) -> None:
        with reach():
            await self._client.delete(*(self._key(key_id, name) for name in _BUCKET_NAMES))

    def status(self) -> LimiterStatus:
        return LimiterStatus(backend="redis", shared=True, error=None, local_decisions=0)

    async def ping(self) -> None:
        """Return once Redis answers as it should, or raise `LimiterUnavailable`."""
        try:
            await self._client.ping()
        except redis.exceptions.RedisError as exc:  # NOAUTH, say: not usable either
            raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections no request holds: after Redis went away they
        lead nowhere, and each would fail one request once Redis is back."""
        with contextlib.suppress(OSError, redis.exceptions.RedisError):  # closed either way
            await self._client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def run(self, mode: str, key_id: int, limits: RequestLimits) -> Decision:
        """One call of the script: `take`, `peek` or `refund` over the key's buckets."""
        buckets = _buckets(limits)
        args: list[str | int | float] = [mode]
        for bucket in buckets:
            args += [bucket.capacity, bucket.window, bucket.cost]
        with reach():
            reply = await self._script(
                keys=[self._key(key_id, bucket.name) for bucket in buckets], args=args
            )
        taken, tokens = bool(reply[0]), [float(t) for t in reply[1:]]
        minute, hour = (
            window_state(held, bucket.capacity, bucket.window)
            for held, bucket in zip(tokens, buckets, strict=True)
        )
        retry_after = (
            0.0
            if taken
            else max(
                seconds_until(bucket.cost, held, bucket.capacity, bucket.window)
                for held, bucket in zip(tokens, buckets, strict=True)
            )
        )
        return Decision(taken, retry_after, minute, hour)

    def _key(self, key_id: int, bucket: str) -> str:
        return f"{self._prefix}:{{key:{key_id}}}:{bucket}"
