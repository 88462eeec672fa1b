"""Token and concurrency limits under contention, over real sockets: many requests of one
key at once never get more than its limit, and every way a request can end gives its
in-flight permit back (issue 15). The clock is a FakeClock that never moves, so nothing
refills while the requests race and the numbers are exact.

Each case runs on both limiter backends; the Redis one is expected to fail until its
backend lands (strict: the day it passes, the mark must go).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import LimitsSettings, ServerSettings, TierSettings
from llmgw.fake_vllm import FakeVLLM, count_prompt_tokens
from llmgw.limits import limits_for
from llmgw.state import KEYS, LIMITER
from llmgw.usage import estimate_prompt_tokens

from ..conftest import FakeClock, Gateway, GatewayFactory, auth
from .conftest import assert_settled

# 28 characters, one word: the gateway estimates ceil(28 / 4) = 7 prompt tokens, and the
# fake vLLM counts 1 word + 4 for the message + 2 for the generation prompt = 7. With the
# estimate exact, a reservation is exactly what the request costs.
EXACT = {"model": "fake-model", "messages": [{"role": "user", "content": "a" * 28}]}
MAX_TOKENS = 5
COST = 7 + MAX_TOKENS


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> LimitsSettings:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return LimitsSettings(backend="redis", redis_url=url)
    return LimitsSettings()


async def limited(
    gateway_factory: GatewayFactory,
    clock: FakeClock,
    backend: LimitsSettings,
    tier: TierSettings,
    **server: Any,
) -> tuple[Gateway, dict[str, Any]]:
    """A gateway whose default tier is `tier`, and a key of it."""
    gateway: Gateway = await gateway_factory(
        clock=clock,
        limits=backend,
        tiers={"free": tier},
        server=ServerSettings(host="127.0.0.1", port=0, health_check_interval=0.1, **server),
    )
    key = dict(await gateway.create_key("alice", tier="free"))
    return gateway, key


async def chat(
    session: aiohttp.ClientSession, gateway: Gateway, key: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """One chat completion: its status and, for an error, its `error` object."""
    async with session.post(
        f"{gateway.base_url}/chat/completions",
        data=orjson.dumps(body),
        headers=auth(key) | {"Content-Type": "application/json"},
    ) as resp:
        raw = await resp.read()
        if resp.status >= 400 and resp.content_type == "application/json":
            error: dict[str, Any] = orjson.loads(raw)["error"]
            return resp.status, error
        return resp.status, None


def granted(fake: FakeVLLM) -> list[int]:
    """What each chat request the fake saw was reserved: its estimate and max_tokens."""
    bodies: list[dict[str, Any]] = [
        r.json for r in fake.behaviour.requests_to("/v1/chat/completions") if r.json
    ]
    return [estimate_prompt_tokens(body) + body["max_tokens"] for body in bodies]


async def in_flight(gateway: Gateway, key_id: int) -> int:
    key = gateway.app[KEYS].get(key_id)
    assert key is not None
    decision = await gateway.app[LIMITER].windows(key_id, limits_for(key, gateway.settings))
    assert decision.in_flight is not None
    return decision.in_flight[0]


# --- tokens per minute ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("a" * 28, 0),  # the estimate is the fake's count: reservations are exact
        ("hi", 6),  # estimated 1 prompt token, counted 7: each request costs 6 more
    ],
)
async def test_two_hundred_requests_at_once_never_get_more_tokens_than_the_limit(
    gateway_factory: GatewayFactory,
    fake: FakeVLLM,
    clock: FakeClock,
    backend: LimitsSettings,
    content: str,
    error: int,
) -> None:
    limit = 300
    # A day's bucket: Redis refills on its own clock, which the test cannot stop, but in
    # a day's bucket of 300 the seconds this takes refill less than a token.
    tier = TierSettings(10_000, 100_000, tokens_per_day=limit)
    gateway, key = await limited(gateway_factory, clock, backend, tier)
    body = {**EXACT, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS}

    connector = aiohttp.TCPConnector(limit=0)  # all 200 at once: no client-side queue
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(chat(session, gateway, key["key"], body) for _ in range(200))
        )

    statuses = Counter(status for status, _ in results)
    assert set(statuses) == {200, 429}, statuses
    assert {(e["type"], e["code"]) for s, e in results if s == 429 and e} == {
        ("tokens", "rate_limit_exceeded")
    }
    reserved = granted(fake)
    assert len(reserved) == statuses[200]
    # What reached vLLM was reserved first, and the reservations fit in the limit.
    assert sum(reserved) <= limit
    # No request was refused while its reservation still fitted: the last one admitted
    # left less than one request's reservation (less what the admitted ones were charged
    # beyond their estimates, settled before all were admitted).
    assert sum(reserved) + (COST - error) + error * statuses[200] > limit
    if not error:
        assert statuses[200] == limit // COST
    rows = await assert_settled(gateway, rows=200)
    charged = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert charged == statuses[200] * COST
    # Charged at most one estimate error per request beyond what was reserved.
    assert charged <= limit + error * statuses[200]


# --- max_in_flight -------------------------------------------------------------------

STREAM = {**EXACT, "max_tokens": MAX_TOKENS, "stream": True}


async def test_fifty_streams_at_once_never_more_than_three_in_flight(
    gateway_factory: GatewayFactory, fake: FakeVLLM, clock: FakeClock, backend: LimitsSettings
) -> None:
    tier = TierSettings(
        10_000, 100_000, tokens_per_minute=100_000, max_in_flight=3, budget_tokens=10**9
    )
    gateway, key = await limited(gateway_factory, clock, backend, tier)
    fake.behaviour.hold = asyncio.Event()  # the admitted streams wait until let go

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(chat(session, gateway, key["key"], STREAM)) for _ in range(50)]
        await fake.behaviour.wait_until(
            lambda: sum(t.done() for t in tasks) == 47 and fake.behaviour.generating == 3,
            seconds=10,
        )
        refused = [t.result() for t in tasks if t.done()]
        fake.behaviour.hold.set()
        results = await asyncio.gather(*tasks)

    assert fake.behaviour.most_generating == 3
    assert {(s, e["code"] if e else None) for s, e in refused} == {
        (429, "concurrency_limit_exceeded")
    }
    assert Counter(s for s, _ in results) == {200: 3, 429: 47}
    await assert_settled(gateway, rows=50)
    assert await in_flight(gateway, int(key["id"])) == 0


async def hold_three(
    session: aiohttp.ClientSession, gateway: Gateway, key: str, fake: FakeVLLM
) -> list[asyncio.Task[tuple[int, dict[str, Any] | None]]]:
    """Three streams of `key` admitted and held by the fake, and a fourth refused."""
    fake.behaviour.hold = asyncio.Event()
    tasks = [asyncio.create_task(chat(session, gateway, key, STREAM)) for _ in range(3)]
    await fake.behaviour.wait_until(lambda: fake.behaviour.generating == 3)
    status, error = await chat(session, gateway, key, STREAM)
    assert (status, error and error["code"]) == (429, "concurrency_limit_exceeded")
    return tasks


async def read_first_token(session: aiohttp.ClientSession, gateway: Gateway, key: str) -> None:
    """A stream whose client leaves after its first token."""
    async with session.post(
        f"{gateway.base_url}/chat/completions",
        data=orjson.dumps(STREAM),
        headers=auth(key) | {"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        received = b""
        while b'"content":" tok0"' not in received:
            chunk = await resp.content.readany()
            assert chunk, received  # the stream must not end before its first token
            received += chunk
        resp.close()  # gone mid-stream


ENDINGS = ["finished", "upstream_500", "upstream_reset", "client_gone", "upstream_timeout"]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_every_ending_gives_the_permit_back(
    gateway_factory: GatewayFactory,
    fake: FakeVLLM,
    clock: FakeClock,
    backend: LimitsSettings,
    ending: str,
) -> None:
    tier = TierSettings(
        10_000, 100_000, tokens_per_minute=100_000, max_in_flight=3, budget_tokens=10**9
    )
    idle = {"stream_idle_timeout": 0.2} if ending == "upstream_timeout" else {}
    gateway, key = await limited(gateway_factory, clock, backend, tier, **idle)
    key_id, secret = int(key["id"]), str(key["key"])
    beh = fake.behaviour
    expected = {
        "finished": 200,
        "upstream_500": 500,  # vLLM's own error passed on
        "upstream_reset": 200,  # the stream had begun: cut with an error event
        "client_gone": None,
        "upstream_timeout": 200,
    }[ending]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        if ending == "client_gone":
            beh.fail, beh.fail_after_tokens = "stall", 2
            async with asyncio.timeout(10):
                await asyncio.gather(
                    *(read_first_token(session, gateway, secret) for _ in range(3))
                )
            await beh.wait_until(lambda: beh.aborted == 3)
        else:
            tasks = await hold_three(session, gateway, secret, fake)
            if ending == "upstream_500":
                beh.fail, beh.http_error_status = "http_error", 500
            elif ending == "upstream_reset":
                beh.fail, beh.fail_after_tokens = "reset", 2
            elif ending == "upstream_timeout":
                beh.fail, beh.fail_after_tokens = "stall", 2
            assert beh.hold is not None
            beh.hold.set()
            results = await asyncio.gather(*tasks)
            assert [s for s, _ in results] == [expected] * 3
        beh.fail, beh.hold = None, None

        await assert_settled(gateway, rows=3 if ending == "client_gone" else 4)
        assert await in_flight(gateway, key_id) == 0
        # The key's three permits are all there again.
        beh.hold = asyncio.Event()
        tasks = [asyncio.create_task(chat(session, gateway, secret, STREAM)) for _ in range(3)]
        await beh.wait_until(lambda: beh.generating == 3)
        beh.hold.set()
        assert [s for s, _ in await asyncio.gather(*tasks)] == [200] * 3


async def test_a_cancelled_request_gives_the_permit_back(
    gateway_factory: GatewayFactory, fake: FakeVLLM, clock: FakeClock, backend: LimitsSettings
) -> None:
    """A client that gives up before any answer: the handler is cancelled mid-await."""
    tier = TierSettings(
        10_000, 100_000, tokens_per_minute=100_000, max_in_flight=3, budget_tokens=10**9
    )
    gateway, key = await limited(gateway_factory, clock, backend, tier)
    key_id, secret = int(key["id"]), str(key["key"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = await hold_three(session, gateway, secret, fake)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fake.behaviour.wait_until(lambda: fake.behaviour.generating == 0)
        fake.behaviour.hold = None
        rows = await assert_settled(gateway, rows=4)
        assert Counter(r["status_code"] for r in rows) == {499: 3, 429: 1}
        assert await in_flight(gateway, key_id) == 0
        assert (await chat(session, gateway, secret, STREAM))[0] == 200


async def test_shutdown_mid_stream_gives_the_permits_back(
    gateway_factory: GatewayFactory, fake: FakeVLLM, clock: FakeClock, backend: LimitsSettings
) -> None:
    tier = TierSettings(
        10_000, 100_000, tokens_per_minute=100_000, max_in_flight=3, budget_tokens=10**9
    )
    gateway, key = await limited(gateway_factory, clock, backend, tier)
    key_id, secret = int(key["id"]), str(key["key"])
    limiter, api_key = gateway.app[LIMITER], gateway.app[KEYS].get(key_id)
    assert api_key is not None
    limits = limits_for(api_key, gateway.settings)
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "stall", 2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        streams = [
            await session.post(
                f"{gateway.base_url}/chat/completions",
                data=orjson.dumps(STREAM),
                headers=auth(secret) | {"Content-Type": "application/json"},
            )
            for _ in range(3)
        ]
        assert [s.status for s in streams] == [200] * 3
        for stream in streams:
            received = b""
            async with asyncio.timeout(5):
                while b"tok0" not in received:
                    chunk = await stream.content.readany()
                    assert chunk, received
                    received += chunk
        assert (await limiter.windows(key_id, limits)).in_flight == (3, 3)
        # The stalled streams outlast the shutdown's grace (2 s): they are cancelled.
        await gateway.runner.cleanup()
        for stream in streams:
            stream.close()
    decision = await limiter.windows(key_id, limits)
    assert decision.in_flight == (0, 3)
    # The next gateway on the same limits (the same Redis, in the shared backend) admits
    # the key's three at once again.
    if backend.backend == "redis":
        restarted, _ = await limited(gateway_factory, clock, backend, tier)
        assert (await in_flight(restarted, key_id)) == 0


def test_the_exact_body_is_estimated_as_vllm_counts_it() -> None:
    """The premise of the exact cases above."""
    assert estimate_prompt_tokens(EXACT) == count_prompt_tokens(EXACT) == COST - MAX_TOKENS
