"""The limiter alone. What needs no time to pass (the limit exactly, all-or-nothing,
refund, tier changes, the hour window binding, forget, the headers, tokens, requests in
flight, budgets) runs against both backends, memory and a real Redis, which must agree;
the refill arithmetic runs on a fake clock, so on the memory backend only (Redis's clock
cannot be moved). Token buckets here refill at 0.1 token a second, so the few
milliseconds Redis's clock runs on during a test never add a whole token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmgw.limits import (
    NOTHING,
    Budget,
    Decision,
    Demand,
    Limiter,
    LimitExceeded,
    Limits,
    MemoryLimiter,
    format_duration,
)
from llmgw.limits.periods import span_of
from llmgw.limits.redis import RedisLimiter

from .conftest import FakeClock
from .redis_server import PATIENT


class Ledger:
    """The stored ledger as the limiters read it (`SpentTokens`): fixed counts, and
    every read written down."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}
        self.reads: list[str] = []

    async def __call__(
        self, since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int:
        who = f"key:{key_id}" if key_id is not None else f"user:{user_id}"
        self.reads.append(who)
        await asyncio.sleep(0.01)  # a query takes a while: requests pile up behind it
        return self.spent.get(who, 0)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock)


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, clock: FakeClock, ledger: Ledger
) -> AsyncIterator[Limiter]:
    """Each backend in turn, through the interface the gateway uses."""
    if request.param == "memory":
        yield MemoryLimiter(clock, ledger)
        return
    shared = RedisLimiter.from_url(
        request.getfixturevalue("redis_url"), timeout=PATIENT, clock=clock, spent=ledger
    )
    yield shared
    await shared.close()


async def take(limiter: Limiter, key_id: int, limits: Limits, demand: Demand = NOTHING) -> Decision:
    """One admission, settled as having used what it was granted: its decision."""
    try:
        held = await limiter.admit(key_id, limits, demand)
    except LimitExceeded as refused:
        return refused.decision
    await held.settle(held.decision.granted)
    return held.decision


FREE = Limits(requests_per_minute=10, requests_per_hour=100)


async def test_a_full_bucket_allows_the_limit_then_refuses(backend: Limiter) -> None:
    decisions = [await take(backend, 1, FREE) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.minute.remaining for d in decisions] == [*range(9, -1, -1), 0]
    assert [d.hour.remaining for d in decisions] == [*range(99, 89, -1), 90]
    # 10/min: one per 6 s, less what passed since the first (Redis's clock runs on).
    assert decisions[10].retry_after is not None
    assert 5.0 < decisions[10].retry_after <= 6.0


async def test_a_refused_request_takes_from_no_window(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=2, requests_per_hour=100)
    for _ in range(2):
        assert (await take(backend, 1, limits)).allowed
    for _ in range(50):
        assert not (await take(backend, 1, limits)).allowed
    # Had the 50 refusals taken from the hour bucket it would be at 48.
    windows = await backend.windows(1, limits)
    assert (windows.minute.remaining, windows.hour.remaining) == (0, 98)


async def test_the_hour_window_binds_when_it_is_emptier_at_once(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=10, requests_per_hour=3)
    for _ in range(3):
        assert (await take(backend, 1, limits)).allowed
    with pytest.raises(LimitExceeded, match="per hour: limit 3") as refused:
        await backend.admit(1, limits, NOTHING)
    decision = refused.value.decision
    assert (decision.minute.remaining, decision.hour.remaining) == (7, 0)
    assert decision.retry_after == pytest.approx(1200, abs=0.1)  # 3/h: one per 1200 s
    headers = decision.headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "1200"
    assert headers["X-RateLimit-Remaining-Minute"] == "7"


async def test_windows_take_nothing(backend: Limiter) -> None:
    for _ in range(5):
        windows = await backend.windows(1, FREE)
        assert windows.allowed
        assert (windows.minute.remaining, windows.hour.remaining) == (10, 100)
    assert (await take(backend, 1, FREE)).minute.remaining == 9


async def test_keys_have_separate_buckets(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=1, requests_per_hour=10)
    assert (await take(backend, 1, limits)).allowed
    assert not (await take(backend, 1, limits)).allowed
    assert (await take(backend, 2, limits)).allowed


async def test_refund_gives_the_request_back_up_to_the_limit(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=1, requests_per_hour=10)
    held = await backend.admit(1, limits, NOTHING)
    assert (held.decision.minute.remaining, held.decision.hour.remaining) == (0, 9)
    after = await held.refund()
    assert (after.minute.remaining, after.hour.remaining) == (1, 10)
    again = await held.refund()  # once only
    assert (again.minute.remaining, again.hour.remaining) == (1, 10)
    await held.settle(0)  # nothing left to settle
    decision = await take(backend, 1, limits)
    assert decision.allowed
    assert decision.hour.remaining == 9
    assert not (await take(backend, 1, limits)).allowed


async def test_a_tier_change_up_keeps_what_was_used(backend: Limiter) -> None:
    for _ in range(10):
        await take(backend, 1, FREE)
    premium = Limits(requests_per_minute=100, requests_per_hour=1000)
    # Upgrading does not refill at once: the used tokens stay used.
    refused = await take(backend, 1, premium)
    assert not refused.allowed
    assert (refused.minute.limit, refused.minute.remaining) == (100, 0)
    assert (refused.hour.limit, refused.hour.remaining) == (1000, 90)


async def test_a_tier_change_down_caps_what_is_left(backend: Limiter) -> None:
    for _ in range(2):
        await take(backend, 1, FREE)  # 8 left of 10
    smaller = Limits(requests_per_minute=5, requests_per_hour=100)
    windows = await backend.windows(1, smaller)
    assert (windows.minute.limit, windows.minute.remaining) == (5, 5)  # not 8
    assert [(await take(backend, 1, smaller)).allowed for _ in range(6)] == [True] * 5 + [False]
    # Back up: the tokens used under the smaller size stay used.
    assert (await backend.windows(1, FREE)).minute.remaining == 0


async def test_forget_drops_the_keys_state(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=1, requests_per_hour=10)
    assert (await take(backend, 1, limits)).allowed
    assert (await take(backend, 2, limits)).allowed
    await backend.forget(1)
    assert (await take(backend, 1, limits)).hour.remaining == 9  # a fresh bucket
    assert not (await take(backend, 2, limits)).allowed  # the other key's untouched


async def test_headers_carry_the_seed_and_openai_names(backend: Limiter) -> None:
    assert (await take(backend, 1, FREE)).headers() == {
        "X-RateLimit-Limit-Minute": "10",
        "X-RateLimit-Remaining-Minute": "9",
        "X-RateLimit-Limit-Hour": "100",
        "X-RateLimit-Remaining-Hour": "99",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
    }


# Tokens, requests in flight and budgets: reserved at admission, settled at the end.

# Both token buckets refill at 0.1 token a second (6 a minute, 8640 a day).
TOKENS = Limits(
    requests_per_minute=60, requests_per_hour=1000, tokens_per_minute=6, tokens_per_day=8640
)


def tokens_left(decision: Decision) -> tuple[int, int]:
    assert decision.tokens_minute is not None and decision.tokens_day is not None
    return decision.tokens_minute.remaining, decision.tokens_day.remaining


async def test_tokens_are_reserved_then_settled_back_or_charged_into_debt(
    backend: Limiter,
) -> None:
    held = await backend.admit(1, TOKENS, Demand(prompt=2, completion=3))
    assert held.decision.granted == 5
    assert tokens_left(held.decision) == (1, 8635)
    await held.settle(2)  # 3 of the 5 reserved given back
    assert tokens_left(await backend.windows(1, TOKENS)) == (4, 8638)

    held = await backend.admit(1, TOKENS, Demand(prompt=1, completion=3))
    assert tokens_left(held.decision) == (0, 8634)
    await held.settle(10)  # 6 more than reserved: charged, the minute's bucket at -6
    await held.settle(0)  # only the first settlement counts
    windows = await backend.windows(1, TOKENS)
    assert tokens_left(windows) == (0, 8628)
    assert windows.tokens_minute is not None
    assert windows.tokens_minute.reset == pytest.approx(120, abs=0.5)  # 12 tokens at 0.1/s

    with pytest.raises(LimitExceeded, match="Rate limit reached for tokens per minute") as no:
        await backend.admit(1, TOKENS, Demand(prompt=1, completion=0))
    refused = no.value.decision
    assert (no.value.kind, refused.refused) == ("tokens", "tokens")
    assert refused.retry_after == pytest.approx(70, abs=0.5)  # from -6 to 1 at 0.1/s
    headers = refused.headers()
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "6"
    assert headers["X-RateLimit-Remaining-Tokens-Day"] == "8628"
    assert headers["Retry-After"] in ("70", "69")
    assert refused.minute.remaining == 58  # the refusal took nothing


async def test_a_request_larger_than_a_token_bucket_is_refused_for_good(
    backend: Limiter,
) -> None:
    with pytest.raises(LimitExceeded, match="Request too large for tokens per minute") as no:
        await backend.admit(1, TOKENS, Demand(prompt=3, completion=4))
    refused = no.value.decision
    assert (refused.refused, refused.retry_after, refused.granted) == ("tokens", None, 7)
    assert "Retry-After" not in refused.headers()
    windows = await backend.windows(1, TOKENS)
    assert (windows.minute.remaining, tokens_left(windows)) == (60, (6, 8640))


async def test_the_limit_waited_for_longest_names_the_refusal(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=2, requests_per_hour=1000, tokens_per_minute=6)
    assert (await take(backend, 1, limits, Demand(prompt=1, completion=0))).allowed
    # One request left; tokens short by 1 of 2: 10 s.
    short = await take(backend, 1, limits, Demand(prompt=6, completion=0))
    assert short.refused == "tokens"
    assert short.retry_after == pytest.approx(10, abs=0.5)
    assert (await take(backend, 1, limits, Demand(prompt=1, completion=4))).allowed
    # Both empty: a request is back in 30 s, 2 tokens in 20 s.
    requests = await take(backend, 1, limits, Demand(prompt=1, completion=1))
    assert requests.refused == "requests"
    assert requests.retry_after == pytest.approx(30, abs=0.5)
    # ... but 6 tokens take 60 s.
    tokens = await take(backend, 1, limits, Demand(prompt=3, completion=3))
    assert tokens.refused == "tokens"
    assert tokens.retry_after == pytest.approx(60, abs=0.5)


async def test_no_more_requests_in_flight_than_the_limit(backend: Limiter) -> None:
    limits = Limits(requests_per_minute=60, requests_per_hour=1000, max_in_flight=2)
    first = await backend.admit(1, limits, NOTHING)
    second = await backend.admit(1, limits, NOTHING)
    assert (first.decision.in_flight, second.decision.in_flight) == ((1, 2), (2, 2))
    with pytest.raises(LimitExceeded, match="Too many requests in flight") as no:
        await backend.admit(1, limits, NOTHING)
    assert (no.value.kind, no.value.code) == ("concurrency", "concurrency_limit_exceeded")
    assert (no.value.decision.retry_after, no.value.decision.in_flight) == (1.0, (2, 2))
    assert no.value.decision.minute.remaining == 58  # refused: nothing taken

    await first.settle(0)
    await first.settle(0)  # released once only
    assert (await backend.windows(1, limits)).in_flight == (1, 2)
    third = await backend.admit(1, limits, NOTHING)
    assert third.decision.in_flight == (2, 2)
    with pytest.raises(LimitExceeded):  # had the second settle released again, admitted
        await backend.admit(1, limits, NOTHING)
    for held in (second, third):
        await held.settle(0)
    assert (await backend.windows(1, limits)).in_flight == (0, 2)
    assert (await backend.windows(2, limits)).in_flight == (0, 2)  # each key its own


def budgeted(tokens: int, user: int | None = None) -> Limits:
    return Limits(
        requests_per_minute=60,
        requests_per_hour=1000,
        key_budget=Budget(tokens, "month"),
        user_budget=Budget(user, "day") if user is not None else None,
        user_id="alice",
    )


async def test_a_budget_lowers_the_grant_then_refuses_until_its_period_ends(
    backend: Limiter, ledger: Ledger, clock: FakeClock
) -> None:
    ledger.spent["key:1"] = 40  # before this process started
    # 120 asked (20 + 50 × 2), 60 left, at least 22 (the prompt and one token a choice).
    held = await backend.admit(1, budgeted(100), Demand(prompt=20, completion=100, choices=2))
    assert held.decision.granted == 60
    assert held.decision.key_budget is not None
    assert (held.decision.key_budget.used, held.decision.key_budget.remaining) == (100, 0)
    await held.settle(30)  # 30 of the 60 given back
    windows = await backend.windows(1, budgeted(100))
    assert windows.key_budget is not None
    assert (windows.key_budget.used, windows.key_budget.remaining) == (70, 30)

    # 30 left: a request that generates nothing is not lowered; one needing 31 is refused.
    with pytest.raises(LimitExceeded, match="Token budget exhausted for this API key"):
        await backend.admit(1, budgeted(100), Demand(prompt=31, completion=0))
    with pytest.raises(LimitExceeded) as no:
        await backend.admit(1, budgeted(100), Demand(prompt=30, completion=10, choices=1))
    refused = no.value.decision
    assert (no.value.kind, no.value.code) == ("budget", "budget_exceeded")
    month = span_of("month", clock.wall())
    assert refused.retry_after == pytest.approx(month.end - clock.wall())
    assert refused.headers()["Retry-After"] == str(int(-(-(month.end - clock.wall()) // 1)))
    assert refused.minute.remaining == 59  # a refusal takes nothing
    assert ledger.reads == ["key:1"]  # the ledger read once, on the first use


async def test_a_request_of_no_tokens_passes_an_overspent_budget(
    backend: Limiter, ledger: Ledger
) -> None:
    ledger.spent["key:1"] = 130  # settled past the budget of 100
    with pytest.raises(LimitExceeded, match="Token budget exhausted"):
        await backend.admit(1, budgeted(100), Demand(prompt=1, completion=0))
    held = await backend.admit(1, budgeted(100), NOTHING)  # the model list
    assert held.decision.key_budget is not None
    assert held.decision.key_budget.remaining == 0
    await held.settle(0)


async def test_a_budget_starts_each_period_from_the_ledger(
    backend: Limiter, ledger: Ledger, clock: FakeClock
) -> None:
    limits = budgeted(1000)
    for _ in range(3):
        await take(backend, 1, limits, Demand(prompt=10, completion=0))
    ledger.spent["key:1"] = 30  # what the ledger holds once those were written
    windows = await backend.windows(1, limits)
    assert windows.key_budget is not None and windows.key_budget.used == 30
    assert ledger.reads == ["key:1"]

    clock.advance(span_of("month", clock.wall()).end - clock.wall() + 1)  # next month
    ledger.spent["key:1"] = 7
    windows = await backend.windows(1, limits)
    assert windows.key_budget is not None
    assert (windows.key_budget.used, windows.key_budget.renews_at) == (
        7,
        span_of("month", clock.wall()).end,
    )
    assert ledger.reads == ["key:1", "key:1"]


async def test_requests_waiting_for_the_ledger_read_it_once(
    backend: Limiter, ledger: Ledger
) -> None:
    ledger.spent["key:1"] = 90
    decisions = await asyncio.gather(
        *(take(backend, 1, budgeted(100), Demand(prompt=1, completion=0)) for _ in range(20))
    )
    assert [d.allowed for d in decisions].count(True) == 10  # 10 left
    assert ledger.reads == ["key:1"]


async def test_a_tier_change_mid_period_keeps_what_was_spent(backend: Limiter) -> None:
    await take(backend, 1, budgeted(100), Demand(prompt=80, completion=0))
    windows = await backend.windows(1, budgeted(1000))
    assert windows.key_budget is not None
    assert (windows.key_budget.used, windows.key_budget.remaining) == (80, 920)
    refused = await take(backend, 1, budgeted(50), Demand(prompt=1, completion=0))
    assert refused.refused == "budget"  # 80 used of 50: none left


async def test_a_users_budget_is_shared_by_the_users_keys(backend: Limiter, ledger: Ledger) -> None:
    ledger.spent["user:alice"] = 10
    held = await backend.admit(1, budgeted(1000, user=50), Demand(prompt=30, completion=0))
    assert held.decision.user_budget is not None
    assert (held.decision.user_budget.used, held.decision.user_budget.period) == (40, "day")
    with pytest.raises(LimitExceeded, match="Token budget exhausted for user 'alice'"):
        await backend.admit(2, budgeted(1000, user=50), Demand(prompt=11, completion=0))
    await held.settle(20)
    assert (await take(backend, 2, budgeted(1000, user=50), Demand(11, 0))).allowed
    assert sorted(ledger.reads) == ["key:1", "key:2", "user:alice"]


async def test_a_refund_gives_everything_back(backend: Limiter, ledger: Ledger) -> None:
    ledger.spent["key:1"] = 5
    limits = Limits(
        requests_per_minute=2,
        requests_per_hour=1000,
        tokens_per_minute=6,
        tokens_per_day=8640,
        max_in_flight=1,
        key_budget=Budget(100, "month"),
        user_id="alice",
    )
    held = await backend.admit(1, limits, Demand(prompt=2, completion=3))
    after = await held.refund()
    assert (after.minute.remaining, after.hour.remaining) == (2, 1000)
    assert tokens_left(after) == (6, 8640)
    assert after.in_flight == (0, 1)
    assert after.key_budget is not None and after.key_budget.used == 5
    await held.settle(5)  # refunded: nothing left to settle
    again = await backend.admit(1, limits, Demand(prompt=2, completion=3))
    assert (tokens_left(again.decision), again.decision.in_flight) == ((1, 8635), (1, 1))
    assert again.decision.key_budget is not None and again.decision.key_budget.used == 10


# The refill arithmetic, on a fake clock: the memory backend only (buckets.lua does the
# same sums on Redis's clock, which a test cannot move).


def test_refill_is_continuous_at_limit_per_window(limiter: MemoryLimiter, clock: FakeClock) -> None:
    for _ in range(10):
        limiter.acquire(1, FREE)
    clock.advance(5.9)  # 10/min is one request per 6 s
    assert not limiter.acquire(1, FREE).allowed
    clock.advance(0.1)
    assert limiter.acquire(1, FREE).allowed
    assert not limiter.acquire(1, FREE).allowed
    clock.advance(60)
    assert limiter.acquire(1, FREE).minute.remaining == 9  # refilled, capped at the limit


def test_a_refused_request_consumes_nothing(limiter: MemoryLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=2, requests_per_hour=100)
    limiter.acquire(1, limits)
    limiter.acquire(1, limits)
    for _ in range(50):
        assert not limiter.acquire(1, limits).allowed
    # Had the 50 refusals taken from the hour bucket it would be at 48, not 98.
    clock.advance(30)
    decision = limiter.acquire(1, limits)
    assert decision.allowed
    assert decision.hour.remaining == 97


def test_the_hour_window_binds_when_it_is_emptier(limiter: MemoryLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=10, requests_per_hour=12)
    for _ in range(10):
        limiter.acquire(1, limits)
    clock.advance(60)  # the minute bucket is full again; the hour one has 2 + 0.2
    assert limiter.acquire(1, limits).allowed
    assert limiter.acquire(1, limits).allowed
    refused = limiter.acquire(1, limits)
    assert not refused.allowed
    assert refused.minute.remaining == 8
    # The hour bucket refills at 12/h = one per 300 s; it holds 0.2 of a token.
    assert refused.retry_after == pytest.approx(240, abs=1e-3)
    headers = refused.headers()
    assert headers["x-ratelimit-limit-requests"] == "12"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "240"
    assert headers["retry-after-ms"] == "240000"


def test_retry_after_is_rounded_up_to_whole_seconds(
    limiter: MemoryLimiter, clock: FakeClock
) -> None:
    limits = Limits(requests_per_minute=7, requests_per_hour=1000)
    for _ in range(7):
        limiter.acquire(1, limits)
    clock.advance(1.0)
    refused = limiter.acquire(1, limits)
    # One token takes 60/7 = 8.571 s; 1 s has passed: 7.571 s to go.
    assert refused.retry_after == pytest.approx(60 / 7 - 1)
    assert refused.headers()["Retry-After"] == "8"
    assert refused.headers()["retry-after-ms"] == "7572"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0204, "21ms"),
        (1.5, "1.5s"),
        (6.0, "6s"),
        (59.9994, "59.999s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_reset_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
