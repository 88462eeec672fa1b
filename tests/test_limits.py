"""The limiter alone. What needs no time to pass (the limit exactly, all-or-nothing,
refund, tier changes, the hour window binding, forget, the headers) runs against both
backends, memory and a real Redis, which must agree; the refill arithmetic runs on a
fake clock, so on the memory backend only (Redis's clock cannot be moved)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmgw.limits import (
    Decision,
    Limiter,
    LimitExceeded,
    MemoryLimiter,
    RequestLimits,
    format_duration,
)
from llmgw.limits.redis import RedisLimiter

from .conftest import FakeClock
from .redis_server import PATIENT


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Limiter]:
    """Each backend in turn, through the interface the gateway uses."""
    if request.param == "memory":
        yield MemoryLimiter(clock)
        return
    shared = RedisLimiter.from_url(request.getfixturevalue("redis_url"), timeout=PATIENT)
    yield shared
    await shared.close()


async def take(limiter: Limiter, key_id: int, limits: RequestLimits) -> Decision:
    """One admission: its decision, granted or refused."""
    try:
        async with limiter.admit(key_id, limits) as held:
            return held.decision
    except LimitExceeded as refused:
        return refused.decision


FREE = RequestLimits(per_minute=10, per_hour=100)


async def test_a_full_bucket_allows_the_limit_then_refuses(backend: Limiter) -> None:
    decisions = [await take(backend, 1, FREE) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.minute.remaining for d in decisions] == [*range(9, -1, -1), 0]
    assert [d.hour.remaining for d in decisions] == [*range(99, 89, -1), 90]
    # 10/min: one per 6 s, less what passed since the first (Redis's clock runs on).
    assert 5.0 < decisions[10].retry_after <= 6.0


async def test_a_refused_request_takes_from_no_window(backend: Limiter) -> None:
    limits = RequestLimits(per_minute=2, per_hour=100)
    for _ in range(2):
        assert (await take(backend, 1, limits)).allowed
    for _ in range(50):
        assert not (await take(backend, 1, limits)).allowed
    # Had the 50 refusals taken from the hour bucket it would be at 48.
    windows = await backend.windows(1, limits)
    assert (windows.minute.remaining, windows.hour.remaining) == (0, 98)


async def test_the_hour_window_binds_when_it_is_emptier_at_once(backend: Limiter) -> None:
    limits = RequestLimits(per_minute=10, per_hour=3)
    for _ in range(3):
        assert (await take(backend, 1, limits)).allowed
    with pytest.raises(LimitExceeded, match="per hour: limit 3") as refused:
        async with backend.admit(1, limits):
            pass
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
    limits = RequestLimits(per_minute=1, per_hour=10)
    assert (await take(backend, 1, limits)).allowed
    assert not (await take(backend, 1, limits)).allowed
    assert (await take(backend, 2, limits)).allowed


async def test_refund_gives_the_request_back_up_to_the_limit(backend: Limiter) -> None:
    limits = RequestLimits(per_minute=1, per_hour=10)
    async with backend.admit(1, limits) as held:
        assert (held.decision.minute.remaining, held.decision.hour.remaining) == (0, 9)
        after = await held.refund()
        assert (after.minute.remaining, after.hour.remaining) == (1, 10)
        again = await held.refund()  # never beyond the bucket's size
        assert (again.minute.remaining, again.hour.remaining) == (1, 10)
    decision = await take(backend, 1, limits)
    assert decision.allowed
    assert decision.hour.remaining == 9
    assert not (await take(backend, 1, limits)).allowed


async def test_a_tier_change_up_keeps_what_was_used(backend: Limiter) -> None:
    for _ in range(10):
        await take(backend, 1, FREE)
    premium = RequestLimits(per_minute=100, per_hour=1000)
    # Upgrading does not refill at once: the used tokens stay used.
    refused = await take(backend, 1, premium)
    assert not refused.allowed
    assert (refused.minute.limit, refused.minute.remaining) == (100, 0)
    assert (refused.hour.limit, refused.hour.remaining) == (1000, 90)


async def test_a_tier_change_down_caps_what_is_left(backend: Limiter) -> None:
    for _ in range(2):
        await take(backend, 1, FREE)  # 8 left of 10
    smaller = RequestLimits(per_minute=5, per_hour=100)
    windows = await backend.windows(1, smaller)
    assert (windows.minute.limit, windows.minute.remaining) == (5, 5)  # not 8
    assert [(await take(backend, 1, smaller)).allowed for _ in range(6)] == [True] * 5 + [False]
    # Back up: the tokens used under the smaller size stay used.
    assert (await backend.windows(1, FREE)).minute.remaining == 0


async def test_forget_drops_the_keys_state(backend: Limiter) -> None:
    limits = RequestLimits(per_minute=1, per_hour=10)
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
    limits = RequestLimits(per_minute=2, per_hour=100)
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
    limits = RequestLimits(per_minute=10, per_hour=12)
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
    limits = RequestLimits(per_minute=7, per_hour=1000)
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
