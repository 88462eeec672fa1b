"""The Redis limiter against a real redis-server: exact under concurrency (one client,
three clients as three replicas would have, two whole gateways), its keys as
documented, and the policy when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio
from redis.crc import key_slot

from llmgw.config import DatabaseSettings, LimitsSettings, load_settings
from llmgw.limits import (
    LimiterUnavailable,
    LimitExceeded,
    MemoryLimiter,
    RequestLimits,
    shown,
)
from llmgw.limits.failover import FailoverLimiter
from llmgw.limits.redis import RedisLimiter, connect

from .conftest import FakeClock, GatewayFactory, auth, free_port, tiers
from .redis_server import PATIENT

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
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    try:
        assert await admitted(admit_with(limiter)) == 10
    finally:
        await limiter.close()


async def test_three_replicas_grant_exactly_the_limit_together(redis_url: str) -> None:
    replicas = [
        RedisLimiter.from_url(redis_url, timeout=PATIENT) for _ in range(3)
    ]  # a client each
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
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
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
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
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


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
        ("redis://:s3cret@cache/1", "redis://cache/1"),
        ("rediss://alice:s3cret@cache:6380/2", "rediss://cache:6380/2"),
        ("unix:///run/redis/redis.sock?db=1&password=s3cret", "unix:///run/redis/redis.sock"),
    ],
)
def test_the_redis_url_is_logged_without_its_password(url: str, logged: str) -> None:
    assert shown(url) == logged


NOWHERE = free_port()


@pytest.fixture
async def gone() -> RedisLimiter:
    """A Redis limiter pointed at a port nothing listens on."""
    return RedisLimiter.from_url(f"redis://127.0.0.1:{NOWHERE}/0")


async def test_redis_gone_the_local_policy_decides_and_refunds_locally(
    gone: RedisLimiter, clock: FakeClock
) -> None:
    local = MemoryLimiter(clock)
    limiter = FailoverLimiter(gone, local, "local", "nowhere")
    limits = RequestLimits(per_minute=1, per_hour=10)
    try:
        await limiter.start()
        assert not limiter.status().shared
        assert f"Error 111 connecting to 127.0.0.1:{NOWHERE}" in str(limiter.status().error)
        async with limiter.admit(1, limits) as held:
            assert (held.decision.minute.remaining, held.decision.hour.remaining) == (0, 9)
            assert local.peek(1, limits).minute.remaining == 0  # taken here, not in Redis
            await held.refund()
        assert local.peek(1, limits).minute.remaining == 1  # and given back here
        with pytest.raises(LimitExceeded):
            async with limiter.admit(1, limits), limiter.admit(1, limits):
                pass
        assert limiter.status().local_decisions == 3
    finally:
        await limiter.close()


async def test_redis_gone_the_deny_policy_refuses(gone: RedisLimiter, clock: FakeClock) -> None:
    limiter = FailoverLimiter(gone, MemoryLimiter(clock), "deny", "nowhere")
    try:
        await limiter.start()
        with pytest.raises(LimiterUnavailable, match="Redis"):
            async with limiter.admit(1, TEN_A_MINUTE):
                pass
        with pytest.raises(LimiterUnavailable):
            await limiter.windows(1, TEN_A_MINUTE)
        assert limiter.status().local_decisions == 0
    finally:
        await limiter.close()


CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
)


async def test_two_gateways_grant_a_key_its_limit_once(
    gateway_factory: GatewayFactory, redis_url: str, tmp_path: Path
) -> None:
    """Two replicas, one Redis. Keys live in each gateway's own database (SQLite here):
    the second starts on a copy of the first's, so the key is the same row in both."""
    limits = LimitsSettings(backend="redis", redis_url=redis_url, redis_timeout=PATIENT)
    first = await gateway_factory(limits=limits, tiers=tiers(free=(10, 1000)))
    created = await first.create_key("alice", tier="free")
    copy = tmp_path / "second.db"
    with (
        contextlib.closing(sqlite3.connect(first.settings.database_path)) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    admin = dataclasses.replace(load_settings(None).admin, socket=str(tmp_path / "second.sock"))
    second = await gateway_factory(
        limits=limits,
        tiers=tiers(free=(10, 1000)),
        admin=admin,
        database=DatabaseSettings(path=str(copy), flush_interval=0.01),
    )
    headers = auth(created["key"]) | {"Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        async with session.post(f"{url}/v1/chat/completions", data=CHAT, headers=headers) as r:
            await r.read()
            return r.status

    connector = aiohttp.TCPConnector(limit=0)  # all at once: no client-side queue
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = await asyncio.gather(
            *(one(session, (first, second)[i % 2].url) for i in range(AT_ONCE))
        )
    # First: had a Redis call timed out (a machine too busy), the gateway would have
    # decided alone, and this says so rather than a count off by some.
    for gateway in (first, second):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/health") as resp,
        ):
            health = await resp.json()
        assert health["limits"] == {
            "backend": "redis",
            "shared": True,
            "error": None,
            "local_decisions": 0,
        }
    assert Counter(statuses) == {200: 10, 429: AT_ONCE - 10}
