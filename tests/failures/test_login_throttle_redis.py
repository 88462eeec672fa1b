"""The login throttle shared through Redis ([limits] backend = "redis"): replicas count
failed logins together, so a guesser spread over them gets what one gateway would
give; with Redis gone, each counts alone again (and says so once)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import aiohttp
import pytest

from llmgw.config import LimitsSettings
from llmgw.limits.login import FailoverThrottle, Lockout, LoginThrottle
from llmgw.limits.redis_login import RedisThrottle

from ..conftest import FakeClock, Gateway, GatewayFactory, free_port, with_secret
from ..redis_server import PATIENT
from ..test_remote_admin import SECRET, add_admin
from .test_login_throttle import throttled, try_login


async def replicas(
    gateway_factory: GatewayFactory, limits: LimitsSettings, tmp_path: Path
) -> tuple[Gateway, Gateway]:
    """Two gateways on one database (each its own admin socket), behind a proxy on
    127.0.0.1, so each guess can come from an address of its own and only the username's
    lock is at play."""
    admin = dataclasses.replace(with_secret(SECRET), trusted_proxies=("127.0.0.1",))
    first: Gateway = await gateway_factory(admin=admin, limits=limits)
    admin = dataclasses.replace(admin, socket=str(tmp_path / "second.sock"))
    second: Gateway = await gateway_factory(admin=admin, limits=limits)
    await add_admin(first)
    return first, second


async def test_guesses_spread_over_two_replicas_lock_the_user_on_both(
    gateway_factory: GatewayFactory,
    redis_url: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    first, second = await replicas(
        gateway_factory, LimitsSettings("redis", redis_url, redis_timeout=PATIENT), tmp_path
    )
    pair = (first, second)
    # A success clears the count: four failures and a login leave nothing behind...
    for i in range(4):
        answer = await try_login(http, pair[i % 2], password="guess", forwarded_for=f"10.0.1.{i}")
        assert answer.status == 401, answer
    assert (await try_login(http, second, forwarded_for="10.0.1.9")).status == 200
    # ... so five more failures, alternating between the replicas, are all checked,
    for i in range(5):
        answer = await try_login(http, pair[i % 2], password="guess", forwarded_for=f"10.0.2.{i}")
        assert answer.status == 401, answer
    # and then the user is locked on both, the right password unchecked.
    for gateway in pair:
        throttled(await try_login(http, gateway, forwarded_for="10.0.3.1"), "for this username", 1)


async def test_with_the_memory_backend_each_replica_counts_alone(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """What the shared throttle is for: the same five guesses, spread, lock nobody."""
    first, second = await replicas(gateway_factory, LimitsSettings("memory"), tmp_path)
    for i in range(5):
        answer = await try_login(
            http, (first, second)[i % 2], password="guess", forwarded_for=f"10.0.2.{i}"
        )
        assert answer.status == 401, answer
    assert (await try_login(http, first, forwarded_for="10.0.3.1")).status == 200


async def test_without_redis_the_replica_counts_alone_and_says_so_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    gone = RedisThrottle.from_url(f"redis://127.0.0.1:{free_port()}/0", PATIENT)
    throttle = FailoverThrottle(gone, LoginThrottle(clock), "nowhere")
    try:
        with caplog.at_level(logging.WARNING, logger="llmgw"):
            answers = [await throttle.refuse(f"10.0.0.{i}", "root") for i in range(6)]
    finally:
        await throttle.close()
    assert answers == [None] * 5 + [Lockout("for this username", 1)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "this replica counts failed logins alone" in warnings[0]
