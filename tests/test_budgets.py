"""Token budgets (issue 15): per key through the gateway, per user at the limiter. A budget
holds under parallel streams, lowers max_tokens to what is left, renews when its
calendar period ends (the FakeClock's wall time moved past midnight UTC), survives a
tier change, and (once budgets read the stored ledger) a restart.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import TierSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.limits import Budget, Demand, LimitExceeded, Limits, MemoryLimiter
from llmgw.limits.periods import span_of

from .conftest import FakeClock, Gateway, GatewayFactory, auth, post
from .failures.conftest import assert_settled

# Estimated 7 prompt tokens, and counted 7 by the fake vLLM: reservations are exact.
EXACT: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "a" * 28}]}
PROMPT, MAX_TOKENS = 7, 5
COST = PROMPT + MAX_TOKENS
CHAT = "/chat/completions"


def budget_tiers(budget: int, **more: int) -> dict[str, TierSettings]:
    tiers = {"free": TierSettings(1000, 10_000, budget_tokens=budget, budget_period="day")}
    tiers |= {
        name: TierSettings(1000, 10_000, budget_tokens=tokens, budget_period="day")
        for name, tokens in more.items()
    }
    return tiers


async def send(
    gateway: Gateway, key: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], dict[str, Any] | bytes]:
    raw = orjson.dumps(body or {**EXACT, "max_tokens": MAX_TOKENS})
    status, headers, answer = await post(f"{gateway.base_url}{CHAT}", raw, auth(key))
    parsed = orjson.loads(answer) if status != 200 else answer
    return status, dict(headers), parsed


def charged(rows: list[dict[str, Any]]) -> int:
    return sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)


async def test_parallel_streams_never_spend_more_than_the_budget(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    budget = 100
    gateway: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(budget))
    key = (await gateway.create_key("alice", tier="free"))["key"]
    fake.behaviour.token_delay = 0.005  # the streams overlap
    stream = {**EXACT, "max_tokens": MAX_TOKENS, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(
                f"{gateway.base_url}{CHAT}",
                data=orjson.dumps(stream),
                headers=auth(key) | {"Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(20)))
    assert sorted(set(statuses)) == [200, 429]
    rows = await assert_settled(gateway, rows=20)
    # The estimate is exact: 8 streams of 12 are 96, and the 4 left are less than any
    # request lowered to fit could keep (its prompt and a token): no more, never beyond.
    assert statuses.count(200) == budget // COST
    assert charged(rows) == statuses.count(200) * COST <= budget

    status, headers, error = await send(gateway, key)
    assert status == 429
    assert isinstance(error, dict)
    assert (error["error"]["type"], error["error"]["code"]) == ("budget", "budget_exceeded")
    assert (
        "Token budget exhausted for this API key: 100 tokens per day" in error["error"]["message"]
    )
    renews = span_of("day", clock.wall()).end
    assert headers["Retry-After"] == str(max(1, math.ceil(renews - clock.wall())))


async def test_max_tokens_is_lowered_to_what_is_left(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(COST + PROMPT + 2))
    key = (await gateway.create_key("alice", tier="free"))["key"]
    assert (await send(gateway, key))[0] == 200
    # 9 left: the prompt (7) and max_tokens lowered from 5 to 2.
    status, _, answer = await send(gateway, key)
    assert status == 200
    assert isinstance(answer, bytes)
    assert orjson.loads(answer)["usage"]["completion_tokens"] == 2
    first, second = fake.behaviour.requests_to("/v1/chat/completions")
    assert first.json == {**EXACT, "max_tokens": 5}
    assert second.json == {**EXACT, "max_tokens": 2}
    rows = await assert_settled(gateway, rows=2)
    assert charged(rows) == COST + PROMPT + 2
    assert (await send(gateway, key))[0] == 429


async def test_a_new_day_renews_the_budget(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(COST))
    key = (await gateway.create_key("alice", tier="free"))["key"]
    assert [(await send(gateway, key))[0] for _ in range(2)] == [200, 429]
    clock.advance(span_of("day", clock.wall()).end - clock.wall() - 1)
    assert (await send(gateway, key))[0] == 429  # a second before midnight UTC
    clock.advance(1)
    assert [(await send(gateway, key))[0] for _ in range(2)] == [200, 429]


async def test_a_tier_change_mid_period_keeps_what_was_spent(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway: Gateway = await gateway_factory(
        clock=clock, tiers=budget_tiers(2 * COST, bigger=3 * COST)
    )
    created = await gateway.create_key("alice", tier="free")
    key = created["key"]
    assert [(await send(gateway, key))[0] for _ in range(3)] == [200, 200, 429]
    async with gateway.admin() as admin:
        await admin.update_key(int(created["id"]), {"tier": "bigger"})
    # Two spent of three: one more, not three.
    assert [(await send(gateway, key))[0] for _ in range(2)] == [200, 429]
    rows = await assert_settled(gateway, rows=5)
    assert charged(rows) == 3 * COST


async def test_a_restart_mid_period_keeps_what_was_spent(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    first: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(2 * COST))
    key = (await first.create_key("alice", tier="free"))["key"]
    assert (await send(first, key))[0] == 200
    await first.flush_ledger()
    await first.runner.cleanup()
    # The same database, a budget one request larger: what was spent comes from the ledger.
    second: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(3 * COST))
    assert [(await send(second, key))[0] for _ in range(3)] == [200, 200, 429]


async def test_a_users_budget_set_by_an_admin_binds_all_the_users_keys(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway: Gateway = await gateway_factory(clock=clock, tiers=budget_tiers(0))
    first = (await gateway.create_key("alice", tier="free"))["key"]
    second = (await gateway.create_key("alice", tier="free"))["key"]
    other = (await gateway.create_key("bob", tier="free"))["key"]
    assert (await send(gateway, first))[0] == 200  # spent before the budget was set
    async with gateway.admin() as admin:
        await admin.set_user_budget("alice", 3 * COST, "week")
    # The ledger's request counts: two more between both keys, then none.
    assert (await send(gateway, second))[0] == 200
    assert (await send(gateway, first))[0] == 200
    status, headers, error = await send(gateway, second)
    assert status == 429
    assert isinstance(error, dict)
    assert (error["error"]["type"], error["error"]["code"]) == ("budget", "budget_exceeded")
    assert "user 'alice'" in error["error"]["message"]
    week = span_of("week", clock.wall())
    assert int(headers["Retry-After"]) == math.ceil(week.end - clock.wall())
    assert (await send(gateway, other))[0] == 200  # another user's keys are not touched
    async with gateway.admin() as admin:
        await admin.clear_user_budget("alice")
    assert (await send(gateway, second))[0] == 200
    rows = await assert_settled(gateway, rows=6)
    assert charged(rows) == 5 * COST


# --- user budgets, at the limiter (the store's user_budgets table lands at merge) -------


def user_limits(budget: int, *, key_budget: int = 0) -> Limits:
    return Limits(
        requests_per_minute=1000,
        requests_per_hour=10_000,
        key_budget=Budget(key_budget, "day") if key_budget else None,
        user_budget=Budget(budget, "month"),
        user_id="alice",
    )


async def test_a_users_keys_share_the_users_budget(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock)
    limits = user_limits(30)
    first = await limiter.admit(1, limits, Demand(7, 5))
    await first.settle(12)
    second = await limiter.admit(2, limits, Demand(7, 5))
    await second.settle(12)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.admit(1, limits, Demand(7, 5, 1))  # 6 left: less than 7 + 1
    assert (refused.value.kind, refused.value.code) == ("budget", "budget_exceeded")
    assert "user 'alice'" in str(refused.value)
    assert refused.value.decision.user_budget is not None
    assert refused.value.decision.user_budget.remaining == 6
    # The refusal took nothing; a smaller request still fits, lowered to what is left.
    third = await limiter.admit(2, limits, Demand(4, 10))
    assert third.decision.granted == 6
    await third.settle(6)
    assert (await limiter.windows(1, limits)).user_budget.remaining == 0  # type: ignore[union-attr]


async def test_a_key_budget_and_its_users_both_bind(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock)
    limits = user_limits(100, key_budget=12)
    held = await limiter.admit(1, limits, Demand(7, 5))
    await held.settle(12)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.admit(1, limits, Demand(7, 5))
    assert "this API key" in str(refused.value)
    # The user's other key still has the user's budget.
    other = await limiter.admit(2, user_limits(100), Demand(7, 5))
    assert other.decision.user_budget is not None
    assert other.decision.user_budget.used == 24


async def test_a_user_budget_starts_from_the_ledger(clock: FakeClock) -> None:
    """What `store.tokens_since` says was spent this period counts (a restart)."""
    asked: list[tuple[float, int | None, str | None]] = []

    async def tokens_since(
        since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int:
        asked.append((since, key_id, user_id))
        return 25 if user_id == "alice" else 0

    limiter = MemoryLimiter(clock, tokens_since)
    limits = user_limits(30)
    results = await asyncio.gather(
        *(limiter.admit(key_id, limits, Demand(1, 3)) for key_id in (1, 2)),
        return_exceptions=True,
    )
    # One read of the ledger however many requests wait for it, from the month's start;
    # 25 spent of 30: the first takes 4, the second cannot keep its prompt and a token.
    assert asked == [(span_of("month", clock.wall()).start, None, "alice")]
    assert [type(r).__name__ for r in results] == ["_Held", "LimitExceeded"]
