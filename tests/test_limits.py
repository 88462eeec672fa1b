"""The limiter alone, on a fake clock: refill, both windows, all-or-nothing, Retry-After."""

from __future__ import annotations

import pytest

from llmgw.limits import MemoryLimiter, RequestLimits, format_duration

from .conftest import FakeClock


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock)


FREE = RequestLimits(per_minute=10, per_hour=100)


def test_a_full_bucket_allows_the_limit_then_refuses(limiter: MemoryLimiter) -> None:
    decisions = [limiter.acquire(1, FREE) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.minute.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    assert decisions[9].hour.remaining == 90


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


def test_keys_have_separate_buckets(limiter: MemoryLimiter) -> None:
    limits = RequestLimits(per_minute=1, per_hour=10)
    assert limiter.acquire(1, limits).allowed
    assert not limiter.acquire(1, limits).allowed
    assert limiter.acquire(2, limits).allowed


def test_refund_gives_the_request_back(limiter: MemoryLimiter) -> None:
    limits = RequestLimits(per_minute=1, per_hour=10)
    assert limiter.acquire(1, limits).allowed
    limiter.refund(1)
    decision = limiter.acquire(1, limits)
    assert decision.allowed
    assert decision.hour.remaining == 9


async def test_a_tier_change_resizes_without_granting_more(limiter: MemoryLimiter) -> None:
    for _ in range(10):
        limiter.acquire(1, FREE)
    premium = RequestLimits(per_minute=100, per_hour=1000)
    # Upgrading does not refill at once: the used tokens stay used.
    assert not limiter.acquire(1, premium).allowed
    downgraded = RequestLimits(per_minute=1, per_hour=100)
    await limiter.forget(1)
    assert limiter.acquire(1, downgraded).minute.remaining == 0


def test_headers_carry_the_seed_and_openai_names(limiter: MemoryLimiter) -> None:
    headers = limiter.acquire(1, FREE).headers()
    assert headers == {
        "X-RateLimit-Limit-Minute": "10",
        "X-RateLimit-Remaining-Minute": "9",
        "X-RateLimit-Limit-Hour": "100",
        "X-RateLimit-Remaining-Hour": "99",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
    }


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
