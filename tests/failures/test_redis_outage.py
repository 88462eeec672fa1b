"""Redis, where the replicas count their limits, goes away and comes back.

With `on_redis_error = "local"` the gateway goes on serving, counting alone, and says so
(/health degraded with the error, a metric counting its lone decisions, one warning);
with "deny" it refuses with a 503 `limiter_unavailable`. Redis started again on its
port brings the shared limits back within a probe or two, with no restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import LimitsSettings

from ..conftest import Gateway, GatewayFactory, auth, post, tiers
from ..redis_server import RedisServer
from .conftest import assert_settled

CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
)


async def get(gateway: Gateway, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + path) as resp:
        return resp.status, await resp.read()


async def limits_health(gateway: Gateway) -> dict[str, Any]:
    status, body = await get(gateway, "/health")
    assert status == 200, body  # degraded or not, it still serves
    health: dict[str, Any] = orjson.loads(body)
    return health


async def until_shared(gateway: Gateway) -> dict[str, Any]:
    """/health once it says ok again (bounded: a probe a second)."""
    async with asyncio.timeout(10):
        while (health := await limits_health(gateway))["status"] != "ok":
            await asyncio.sleep(0.05)
    return health


@pytest.fixture
def own_redis(tmp_path: Path) -> RedisServer:
    """A Redis of this test's own, to stop and start (started by the test)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    return RedisServer(directory)


async def test_redis_gone_the_gateway_counts_alone_until_it_is_back(
    gateway_factory: GatewayFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.start()
    try:
        gateway = await gateway_factory(
            limits=LimitsSettings(backend="redis", redis_url=own_redis.url),
            tiers=tiers(free=(100, 1000)),
        )
        key = (await gateway.create_key("alice", tier="free"))["key"]
        url, headers = f"{gateway.base_url}/chat/completions", auth(key)
        assert [(await post(url, CHAT, headers))[0] for _ in range(2)] == [200, 200]
        assert (await limits_health(gateway))["limits"]["shared"] is True

        with caplog.at_level(logging.WARNING, logger="llmgw"):
            await asyncio.to_thread(own_redis.stop)
            answers = [await post(url, CHAT, headers) for _ in range(3)]
            assert [status for status, _, _ in answers] == [200, 200, 200]
            # Counted here alone, from this replica's own full bucket.
            assert [h["X-RateLimit-Remaining-Minute"] for _, h, _ in answers] == [
                "99",
                "98",
                "97",
            ]
            health = await limits_health(gateway)
            assert health["status"] == "degraded"
            limits = health["limits"]
            assert (limits["backend"], limits["shared"], limits["local_decisions"]) == (
                "redis",
                False,
                3,
            )
            assert f"127.0.0.1:{own_redis.port}" in limits["error"]
            _, metrics = await get(gateway, "/metrics")
            assert b"\nllmgw_limiter_local_decisions_total 3\n" in metrics
            assert b'\nllmgw_limiter_shared{backend="redis"} 0\n' in metrics

            await asyncio.to_thread(own_redis.start)  # the same port, empty
            health = await until_shared(gateway)
            assert health["limits"] == {
                "backend": "redis",
                "shared": True,
                "error": None,
                "local_decisions": 3,
            }
            status, answered, _ = await post(url, CHAT, headers)
            assert status == 200
            assert answered["X-RateLimit-Remaining-Minute"] == "99"  # Redis's count, anew
            assert (await limits_health(gateway))["limits"]["local_decisions"] == 3

        warnings = [r.getMessage() for r in caplog.records if r.name == "llmgw"]
        assert [w for w in warnings if "cannot be reached" in w] == [
            f"limits: redis at redis://127.0.0.1:{own_redis.port}/0 cannot be reached "
            f"({limits['error']}); until it answers, this replica decides alone, with its own "
            "limits"
        ]
        assert len([w for w in warnings if "answers again" in w]) == 1
        await assert_settled(gateway, rows=6)
    finally:
        own_redis.stop()


async def test_redis_gone_the_deny_policy_refuses_until_it_is_back(
    gateway_factory: GatewayFactory, own_redis: RedisServer
) -> None:
    """Started while Redis is down, under "deny": 503s, then served once Redis is up."""
    try:
        gateway = await gateway_factory(
            limits=LimitsSettings(backend="redis", redis_url=own_redis.url, on_redis_error="deny"),
        )
        key = (await gateway.create_key("alice", tier="free"))["key"]
        url, headers = f"{gateway.base_url}/chat/completions", auth(key)
        status, answered, body = await post(url, CHAT, headers)
        assert status == 503
        error = orjson.loads(body)["error"]
        assert error["code"] == "limiter_unavailable"
        assert error["type"] == "server_error"
        assert "Redis" in error["message"] and "try again" in error["message"]
        assert answered["Retry-After"] == "1"
        health = await limits_health(gateway)
        assert (health["status"], health["limits"]["shared"]) == ("degraded", False)

        # A bad body is still a 400 (with no limit headers to show), not a 503.
        status, answered, _ = await post(url, b"{not json", headers)
        assert status == 400
        assert "X-RateLimit-Remaining-Minute" not in answered

        await asyncio.to_thread(own_redis.start)
        await until_shared(gateway)
        status, answered, _ = await post(url, CHAT, headers)
        assert status == 200
        assert answered["X-RateLimit-Remaining-Minute"] == "9"
        await assert_settled(gateway, rows=3)
    finally:
        own_redis.stop()
