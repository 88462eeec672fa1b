"""The Redis limiter against a real redis-server: exact under concurrency (one client,
three clients as three replicas would have, two whole gateways) for requests, tokens
and requests in flight, its keys as documented, permits that outlive no crash, and the
policy when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio
from redis.crc import key_slot

from llmgw.config import DatabaseSettings, LimitsSettings, load_settings
from llmgw.limits import (
    NOTHING,
    Budget,
    Demand,
    LimiterUnavailable,
    LimitExceeded,
    Limits,
    MemoryLimiter,
    shown,
)
from llmgw.limits.failover import FailoverLimiter
from llmgw.limits.periods import span_of
from llmgw.limits.redis import RedisLimiter
from llmgw.limits.redis_client import connect

from .conftest import FakeClock, GatewayFactory, auth, free_port, tiers
from .redis_server import PATIENT, RedisServer

TEN_A_MINUTE = Limits(requests_per_minute=10, requests_per_hour=1000)
AT_ONCE = 300


async def admitted(admit: Callable[[], Awaitable[bool]]) -> int:
    """How many of AT_ONCE admissions started together were granted."""
    return sum(await asyncio.gather(*(admit() for _ in range(AT_ONCE))))


def admit_with(limiter: RedisLimiter, key_id: int = 1) -> Callable[[], Awaitable[bool]]:
    async def admit() -> bool:
        try:
            held = await limiter.admit(key_id, TEN_A_MINUTE, NOTHING)
        except LimitExceeded:
            return False
        await held.settle(0)
        return True

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
    client = connect(redis_url, PATIENT)  # the limiter's own kind of client and pool

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


EVERY = Limits(
    requests_per_minute=10,
    requests_per_hour=1000,
    tokens_per_minute=600,
    tokens_per_day=86_400,
    max_in_flight=2,
    key_budget=Budget(10_000, "month"),
    user_budget=Budget(50_000, "day"),
    user_id="ålice {x}",  # a tag must hold whatever a user id holds
)


async def test_keys_share_a_cluster_slot_and_expire_when_full_again(redis_url: str) -> None:
    clock = FakeClock()
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT, clock=clock)
    client = redis.asyncio.from_url(redis_url, decode_responses=True)
    user = "ålice {x}".encode().hex()
    month, day = span_of("month", clock.wall()), span_of("day", clock.wall())
    key = f"llmgw:{{u:{user}}}:key:42"
    names = {
        f"{key}:requests:minute": 6_000,  # 1 of 10 a minute: full again in 6 s
        f"{key}:requests:hour": 3_600,  # 1 of 1000 an hour
        f"{key}:tokens:minute": 1_000,  # 10 of 600 a minute
        f"{key}:tokens:day": 10_000,  # 10 of 86,400 a day
        f"{key}:inflight": 30_000,  # a permit's lease
    }
    budgets = {
        f"{key}:budget:{month.name}": month.end + 86_400,  # kept a day past the period
        f"llmgw:{{u:{user}}}:user:budget:{day.name}": day.end + 86_400,
    }
    try:
        await limiter.windows(42, TEN_A_MINUTE)
        assert await client.keys("*") == []  # a look creates nothing
        held = await limiter.admit(42, EVERY, Demand(prompt=4, completion=6))
        stored = set(await client.keys("*"))
        assert stored == set(names) | set(budgets)
        assert len({key_slot(str(name).encode()) for name in stored}) == 1
        for name, ttl in names.items():
            assert ttl - 1_000 < await client.pttl(name) <= ttl, name
        for name, expiry in budgets.items():
            assert await client.expiretime(name) == math.ceil(expiry), name
            assert await client.get(name) == "10"

        await held.settle(10)
        assert await client.exists(f"{key}:inflight") == 0  # its last permit released
        await limiter.forget(42)
        # The key's state is gone; its user's budget stays, shared with the user's keys.
        left = await client.keys("*")
        assert left == [f"llmgw:{{u:{user}}}:user:budget:{day.name}"]
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_bucket_in_debt_expires_only_once_full_again(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    client = redis.asyncio.from_url(redis_url)
    limits = Limits(requests_per_minute=10, requests_per_hour=1000, tokens_per_minute=600)
    try:
        held = await limiter.admit(1, limits, Demand(prompt=100, completion=500))
        await held.settle(1200)  # 600 charged beyond a bucket of 600: 1200 to refill
        ttl = await client.pttl("llmgw:{u:}:key:1:tokens:minute")
        assert 119_000 < ttl <= 120_000
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_flushed_script_is_loaded_again(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    client = redis.asyncio.from_url(redis_url)
    try:
        await (await limiter.admit(1, TEN_A_MINUTE, NOTHING)).settle(0)
        await client.script_flush()  # as a Redis restart or failover would leave it
        held = await limiter.admit(1, TEN_A_MINUTE, NOTHING)
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
    limits = Limits(requests_per_minute=1, requests_per_hour=10)
    try:
        await limiter.start()
        assert not limiter.status().shared
        assert f"Error 111 connecting to 127.0.0.1:{NOWHERE}" in str(limiter.status().error)
        held = await limiter.admit(1, limits, NOTHING)
        assert (held.decision.minute.remaining, held.decision.hour.remaining) == (0, 9)
        assert (await local.windows(1, limits)).minute.remaining == 0  # taken here
        await held.refund()
        assert (await local.windows(1, limits)).minute.remaining == 1  # and given back here
        await limiter.admit(1, limits, NOTHING)
        with pytest.raises(LimitExceeded):
            await limiter.admit(1, limits, NOTHING)
        assert limiter.status().local_decisions == 3
    finally:
        await limiter.close()


async def test_redis_gone_the_deny_policy_refuses(gone: RedisLimiter, clock: FakeClock) -> None:
    limiter = FailoverLimiter(gone, MemoryLimiter(clock), "deny", "nowhere")
    try:
        await limiter.start()
        with pytest.raises(LimiterUnavailable, match="Redis"):
            await limiter.admit(1, TEN_A_MINUTE, NOTHING)
        with pytest.raises(LimiterUnavailable):
            await limiter.windows(1, TEN_A_MINUTE)
        assert limiter.status().local_decisions == 0
    finally:
        await limiter.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


async def test_a_reservation_made_in_redis_settles_there_or_stays_counted(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    local = MemoryLimiter(clock)
    shared = RedisLimiter.from_url(own_redis.url, timeout=PATIENT)
    limiter = FailoverLimiter(shared, local, "local", "test")
    limits = Limits(requests_per_minute=10, requests_per_hour=100, max_in_flight=1)
    try:
        await limiter.start()
        held = await limiter.admit(1, limits, NOTHING)
        await held.settle(0)  # in Redis: the local limiter never saw it
        assert (await shared.windows(1, limits)).in_flight == (0, 1)
        held = await limiter.admit(1, limits, NOTHING)
        assert (await local.windows(1, limits)).minute.remaining == 10

        await asyncio.to_thread(own_redis.stop)
        await held.settle(0)  # no error: Redis is gone, the permit runs out by its lease
        assert limiter.status().shared is False
        local_held = await limiter.admit(1, limits, NOTHING)  # decided here now
        assert local_held.decision.in_flight == (1, 1)
        await local_held.settle(0)
        assert (await local.windows(1, limits)).in_flight == (0, 1)
    finally:
        await limiter.close()


# Exactness under contention: three limiters as three replicas, one Redis.


def replicas(redis_url: str, lease: float = 30.0) -> list[RedisLimiter]:
    return [RedisLimiter.from_url(redis_url, timeout=PATIENT, lease=lease) for _ in range(3)]


async def test_three_replicas_grant_no_more_tokens_than_the_limit(redis_url: str) -> None:
    # A day's bucket: it refills 0.01 token a second, nothing during the test.
    limits = Limits(requests_per_minute=10**6, requests_per_hour=10**6, tokens_per_day=1000)
    three = replicas(redis_url)
    refusals: list[str] = []

    async def admit(i: int) -> int:
        try:
            held = await three[i % 3].admit(1, limits, Demand(prompt=3, completion=4))
        except LimitExceeded as refused:
            refusals.append(refused.kind)
            return 0
        await held.settle(held.decision.granted)
        return held.decision.granted

    try:
        granted = await asyncio.gather(*(admit(i) for i in range(200)))
        assert sum(granted) == 994  # 142 requests of 7: the most that fits in 1000
        assert refusals == ["tokens"] * (200 - 142)
        tokens_day = (await three[0].windows(1, limits)).tokens_day
        assert tokens_day is not None and tokens_day.remaining == 6
    finally:
        for replica in three:
            await replica.close()


async def test_three_replicas_hold_no_more_in_flight_than_the_limit(redis_url: str) -> None:
    limits = Limits(requests_per_minute=10**6, requests_per_hour=10**6, max_in_flight=3)
    three = replicas(redis_url)
    holding = most = done = 0
    refusals: set[str] = set()

    async def hold(i: int) -> None:
        nonlocal holding, most, done
        async with asyncio.timeout(20):
            while True:
                try:
                    held = await three[i % 3].admit(1, limits, NOTHING)
                    break
                except LimitExceeded as refused:
                    refusals.add(refused.kind)
                    await asyncio.sleep(0.002)
        holding += 1
        most = max(most, holding)
        await asyncio.sleep(0.01)  # the request runs
        holding -= 1
        await held.settle(0)
        done += 1

    try:
        await asyncio.gather(*(hold(i) for i in range(50)))
        assert (most, done, refusals) == (3, 50, {"concurrency"})
        assert (await three[0].windows(1, limits)).in_flight == (0, 3)
    finally:
        for replica in three:
            await replica.close()


async def test_a_crashed_holders_permit_runs_out_with_its_lease(redis_url: str) -> None:
    limits = Limits(requests_per_minute=100, requests_per_hour=1000, max_in_flight=1)
    crashed = RedisLimiter.from_url(redis_url, timeout=PATIENT, lease=0.3)
    other = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    try:
        await crashed.admit(1, limits, NOTHING)
        began = time.monotonic()
        await crashed.close()  # gone without settling: nothing renews its permit
        with pytest.raises(LimitExceeded, match="in flight"):
            await other.admit(1, limits, NOTHING)
        async with asyncio.timeout(5):
            while (await other.windows(1, limits)).in_flight != (0, 1):
                await asyncio.sleep(0.02)  # Redis's clock cannot be moved: bounded polling
        assert time.monotonic() - began < 1.0
        await (await other.admit(1, limits, NOTHING)).settle(0)
    finally:
        await other.close()


async def test_a_long_requests_lease_is_renewed(redis_url: str) -> None:
    limits = Limits(requests_per_minute=100, requests_per_hour=1000, max_in_flight=1)
    holder = RedisLimiter.from_url(redis_url, timeout=PATIENT, lease=0.3)
    other = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    try:
        held = await holder.admit(1, limits, NOTHING)
        await asyncio.sleep(1.0)  # a request running for more than three leases
        with pytest.raises(LimitExceeded, match="in flight"):
            await other.admit(1, limits, NOTHING)
        await held.settle(0)
        await (await other.admit(1, limits, NOTHING)).settle(0)
    finally:
        await holder.close()
        await other.close()


async def test_a_settlement_outlives_its_cancelled_request(redis_url: str) -> None:
    limits = Limits(
        requests_per_minute=100, requests_per_hour=1000, tokens_per_day=8640, max_in_flight=1
    )
    limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
    client = redis.asyncio.from_url(redis_url)
    try:
        held = await limiter.admit(1, limits, Demand(prompt=10, completion=90))
        await client.client_pause(300, all=False)  # Redis slow to take a write
        settling = asyncio.create_task(held.settle(10))
        await asyncio.sleep(0.05)  # under way ...
        settling.cancel()  # ... when the client goes
        with pytest.raises(asyncio.CancelledError):
            await settling
        await limiter.close()  # waits for what is under way
        limiter = RedisLimiter.from_url(redis_url, timeout=PATIENT)
        windows = await limiter.windows(1, limits)
        assert windows.in_flight == (0, 1)
        assert windows.tokens_day is not None and windows.tokens_day.remaining == 8630
    finally:
        await client.aclose()
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
