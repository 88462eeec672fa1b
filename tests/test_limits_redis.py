"""The Redis limiter against a real redis-server: exact under concurrency (one client,
and three clients as three replicas would have), its keys as documented."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio
from redis.crc import key_slot

from llmgw.limits import LimitExceeded, RequestLimits
from llmgw.limits.redis import RedisLimiter, connect

TEN_A_MINUTE = RequestLimits(per_minute=10, per_hour=1000)
AT_ONCE = 300


async def admitted(admit: Callable[[], Awaitable[bool]]) -> int:
    """How many of AT_ONCE admissions started together were granted."""
    return sum(await asyncio.gather(*(admit() for _ in range(AT_ONCE))))


def admit_with(limiter: RedisLimiter, key_id: int = 1) -> Callable[[], Awaitable[bool]]:
    async def admit() -> bool:
        try:
            async with limiter.admit(key_id, TEN_A_MINUTE):
                return True
        except LimitExceeded:
            return False

    return admit


async def test_one_client_grants_exactly_the_limit(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url)
    try:
        assert await admitted(admit_with(limiter)) == 10
    finally:
        await limiter.close()


async def test_three_replicas_grant_exactly_the_limit_together(redis_url: str) -> None:
    replicas = [RedisLimiter.from_url(redis_url) for _ in range(3)]  # a client each
    try:
        admits = [admit_with(replica) for replica in replicas]
        granted = await asyncio.gather(
            *(admits[i % 3]() for i in range(AT_ONCE))  # interleaved over the three
        )
        assert sum(granted) == 10
    finally:
        for replica in replicas:
            await replica.close()


async def test_the_harness_catches_a_limiter_that_reads_then_writes(redis_url: str) -> None:
    """The exactness tests can fail: the same burst through a limiter that reads the
    count and writes it back in two round trips grants more than the limit."""
    client = connect(redis_url)  # the limiter's own kind of client and pool

    async def read_then_write() -> bool:
        used = int(await client.get("count") or 0)
        if used >= 10:
            return False
        await client.set("count", used + 1)
        return True

    try:
        assert await admitted(read_then_write) > 10
    finally:
        await client.aclose()


async def test_keys_share_a_cluster_slot_and_expire_after_their_window(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url)
    client = redis.asyncio.from_url(redis_url)
    try:
        await limiter.windows(42, TEN_A_MINUTE)
        assert await client.keys("*") == []  # a look creates nothing
        async with limiter.admit(42, TEN_A_MINUTE):
            pass
        minute, hour = b"llmgw:{key:42}:requests:minute", b"llmgw:{key:42}:requests:hour"
        assert sorted(await client.keys("*")) == [hour, minute]
        assert key_slot(minute) == key_slot(hour)
        assert 59_000 < await client.pttl(minute) <= 60_000
        assert 3_599_000 < await client.pttl(hour) <= 3_600_000
        await limiter.forget(42)
        assert await client.keys("*") == []
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_flushed_script_is_loaded_again(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url)
    client = redis.asyncio.from_url(redis_url)
    try:
        async with limiter.admit(1, TEN_A_MINUTE):
            pass
        await client.script_flush()  # as a Redis restart or failover would leave it
        async with limiter.admit(1, TEN_A_MINUTE) as held:
            assert held.decision.minute.remaining == 8
    finally:
        await client.aclose()
        await limiter.close()
