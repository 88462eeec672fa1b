"""The limiter interface: what a request asks of its key's limits, and what it is told.

A request is *admitted* once its body has been read and checked (a 400 or 403 costs
nothing): `Limiter.admit` checks every limit of the key at once, all or nothing —
requests per minute and hour, tokens per minute and day, requests in flight, the key's
and its user's token budgets — and takes the request's `Demand` (its prompt, estimated,
plus `max_tokens` × `n`) from each. The `Reservation` it returns is *settled* when the
request ends: the estimate is replaced by the tokens really used (given back, or
charged, a bucket going into debt) and the in-flight permit released, exactly once
however the request ended. `Reservation.refund` gives everything back when no upstream
ever saw the request. A refused request takes nothing and raises `LimitExceeded`, which
names the limit and carries the headers to send.

Backends: `memory` (one process; the default) and `redis` (shared by the replicas;
`failover` applies the policy for when Redis cannot be reached). Both keep token buckets
of the same arithmetic (`window_state`, `seconds_until` below) and decide in the same
order (`memory.py` in Python, `buckets.lua` in Redis), so the same state gives the same
`Decision` and headers from either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ..api_types import BudgetPeriod as Period
from ..api_types import BudgetView, InFlightView, LimitsView, WindowBudget
from ..times import iso_utc

if TYPE_CHECKING:
    from ..config import Settings, TierSettings
    from ..keys import ApiKey

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
# Refill is floating-point arithmetic: 6 s at 10/min must count as one whole token.
# (limits/buckets.lua holds the same figure.)
EPSILON = 1e-9
# What a refusal for concurrency tells the client to wait: a permit frees when some
# request of the key ends, which nobody can foresee.
CONCURRENCY_RETRY = 1.0

Kind = Literal["requests", "tokens", "concurrency", "budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    tokens: int
    period: Period


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of one key as it applies now (0: unlimited)."""

    requests_per_minute: int
    requests_per_hour: int
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    max_in_flight: int = 0
    key_budget: Budget | None = None
    user_budget: Budget | None = None
    user_id: str = ""  # whose budget `user_budget` is

    @property
    def counts_tokens(self) -> bool:
        """Whether any limit counts tokens (so requests must be reserved in tokens)."""
        return bool(
            self.tokens_per_minute or self.tokens_per_day or self.key_budget or self.user_budget
        )


def tier_of(key: ApiKey, settings: Settings) -> TierSettings:
    """The key's tier (the default tier, should its tier have been removed from the
    config)."""
    return settings.tiers.get(key.tier) or settings.tiers[settings.admin.default_tier]


def limits_for(key: ApiKey, settings: Settings) -> Limits:
    """The key's own limits where it has them, else its tier's."""
    tier = tier_of(key, settings)
    budget_tokens = _own(key.budget_tokens, tier.budget_tokens)
    return Limits(
        requests_per_minute=key.requests_per_minute or tier.requests_per_minute,
        requests_per_hour=key.requests_per_hour or tier.requests_per_hour,
        tokens_per_minute=_own(key.tokens_per_minute, tier.tokens_per_minute),
        tokens_per_day=_own(key.tokens_per_day, tier.tokens_per_day),
        max_in_flight=_own(key.max_in_flight, tier.max_in_flight),
        key_budget=(
            Budget(budget_tokens, key.budget_period or tier.budget_period)
            if budget_tokens
            else None
        ),
        user_budget=(
            Budget(key.user_budget_tokens, key.user_budget_period or "month")
            if key.user_budget_tokens
            else None
        ),
        user_id=key.user_id,
    )


def _own(override: int | None, tier: int) -> int:
    # 0 is a key's own "unlimited", not "the tier's".
    return tier if override is None else override


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request may cost in tokens, known before it is sent."""

    prompt: int  # estimated from the body
    completion: int  # max_tokens × n: the most it may generate
    choices: int = 1  # n

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @property
    def least(self) -> int:
        """The least a request lowered to fit a budget may keep: its prompt and one
        token per choice (a request that generates nothing cannot be lowered)."""
        return self.prompt + self.choices if self.completion else self.total


NOTHING = Demand(0, 0)  # a request that costs no tokens (the model list)


@dataclass(frozen=True, slots=True)
class WindowState:
    limit: int
    remaining: int
    reset: float  # seconds until the window is full again

    def view(self) -> WindowBudget:
        return WindowBudget(
            limit=self.limit, remaining=self.remaining, reset_s=round(self.reset, 1)
        )


def seconds_until(wanted: float, tokens: float, capacity: float, window: float) -> float:
    """Seconds until a bucket holding `tokens` of `capacity` (refilled in `window`
    seconds from empty) holds `wanted`."""
    return max(0.0, (wanted - EPSILON - tokens) / (capacity / window))


def window_state(tokens: float, capacity: float, window: float) -> WindowState:
    return WindowState(
        limit=int(capacity),
        remaining=max(0, math.floor(tokens + EPSILON)),
        reset=seconds_until(capacity, tokens, capacity, window),
    )


@dataclass(frozen=True, slots=True)
class BudgetState:
    scope: str  # `key` or `user`
    limit: int
    used: float
    period: Period
    renews_at: float  # epoch seconds

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.limit - self.used + EPSILON))

    def view(self) -> BudgetView:
        return BudgetView(
            limit=self.limit,
            used=math.ceil(self.used - EPSILON),
            remaining=self.remaining,
            period=self.period,
            renews_at=iso_utc(self.renews_at),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # Seconds until the request could be allowed (0 when it is); None when waiting
    # cannot help (the request is larger than the limit).
    retry_after: float | None
    minute: WindowState  # requests
    hour: WindowState
    tokens_minute: WindowState | None = None  # None: no such limit
    tokens_day: WindowState | None = None
    in_flight: tuple[int, int] | None = None  # (now, limit)
    key_budget: BudgetState | None = None
    user_budget: BudgetState | None = None
    refused: Kind | None = None
    granted: int = 0  # the tokens reserved: the demand, or less to fit a budget

    def headers(self) -> dict[str, str]:
        """The seed's headers and OpenAI's trios, each for the window closest to empty."""
        binding = self.hour if self.hour.remaining < self.minute.remaining else self.minute
        headers = {
            "X-RateLimit-Limit-Minute": str(self.minute.limit),
            "X-RateLimit-Remaining-Minute": str(self.minute.remaining),
            "X-RateLimit-Limit-Hour": str(self.hour.limit),
            "X-RateLimit-Remaining-Hour": str(self.hour.remaining),
            "x-ratelimit-limit-requests": str(binding.limit),
            "x-ratelimit-remaining-requests": str(binding.remaining),
            "x-ratelimit-reset-requests": format_duration(binding.reset),
        }
        tokens = [w for w in (self.tokens_minute, self.tokens_day) if w is not None]
        if tokens:
            if self.tokens_minute is not None:
                headers["X-RateLimit-Limit-Tokens-Minute"] = str(self.tokens_minute.limit)
                headers["X-RateLimit-Remaining-Tokens-Minute"] = str(self.tokens_minute.remaining)
            if self.tokens_day is not None:
                headers["X-RateLimit-Limit-Tokens-Day"] = str(self.tokens_day.limit)
                headers["X-RateLimit-Remaining-Tokens-Day"] = str(self.tokens_day.remaining)
            closest = min(tokens, key=lambda w: w.remaining)
            headers["x-ratelimit-limit-tokens"] = str(closest.limit)
            headers["x-ratelimit-remaining-tokens"] = str(closest.remaining)
            headers["x-ratelimit-reset-tokens"] = format_duration(closest.reset)
        if not self.allowed and self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return headers

    def view(self) -> LimitsView:
        """Each limit and what is left of it, as the admin API shows it."""
        return LimitsView(
            requests_per_minute=self.minute.view(),
            requests_per_hour=self.hour.view(),
            tokens_per_minute=self.tokens_minute.view() if self.tokens_minute else None,
            tokens_per_day=self.tokens_day.view() if self.tokens_day else None,
            in_flight=(
                InFlightView(current=self.in_flight[0], limit=self.in_flight[1])
                if self.in_flight
                else None
            ),
            key_budget=self.key_budget.view() if self.key_budget else None,
            user_budget=self.user_budget.view() if self.user_budget else None,
        )


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


_CODES: Mapping[Kind, str] = {
    "requests": "rate_limit_exceeded",
    "tokens": "rate_limit_exceeded",  # OpenAI's code for both, `type` telling which
    "concurrency": "concurrency_limit_exceeded",
    "budget": "budget_exceeded",
}


class LimitExceeded(Exception):
    """The request was refused: `kind` names the limit (OpenAI's `error.type` for it),
    `code` is the error's code, and the message says which limit and what to do."""

    def __init__(self, decision: Decision, limits: Limits, demand: Demand) -> None:
        kind = decision.refused or "requests"
        super().__init__(_message(kind, decision, limits, demand))
        self.kind: Kind = kind
        self.code = _CODES[kind]
        self.decision = decision

    def headers(self) -> Mapping[str, str]:
        return self.decision.headers()


def _message(kind: Kind, d: Decision, limits: Limits, demand: Demand) -> str:
    wait = "" if d.retry_after is None else f" Please try again in {math.ceil(d.retry_after)}s."
    if kind == "requests":
        window, limit = (
            ("minute", limits.requests_per_minute)
            if d.minute.remaining == 0
            else ("hour", limits.requests_per_hour)
        )
        return f"Rate limit reached for requests per {window}: limit {limit}.{wait}"
    if kind == "tokens":
        window, state = _binding_tokens(d, demand)
        if d.retry_after is None:
            return (
                f"Request too large for tokens per {window}: limit {state.limit}, requested "
                f"{demand.total} (the prompt, about {demand.prompt}, plus max_tokens × n, "
                f"{demand.completion}). Lower max_tokens or shorten the prompt."
            )
        return (
            f"Rate limit reached for tokens per {window}: limit {state.limit}, remaining "
            f"{state.remaining}, requested {d.granted or demand.total}.{wait}"
        )
    if kind == "concurrency":
        return (
            f"Too many requests in flight for this API key: limit {limits.max_in_flight}. "
            "Wait for one to finish, then try again."
        )
    budget = d.key_budget if d.key_budget and d.key_budget.remaining < demand.least else None
    budget = budget or d.user_budget or d.key_budget
    assert budget is not None  # a budget refusal has one
    whose = f"user {limits.user_id!r}" if budget.scope == "user" else "this API key"
    return (
        f"Token budget exhausted for {whose}: {budget.limit} tokens per {budget.period}, "
        f"{budget.remaining} left, and this request needs at least {demand.least}. It "
        f"renews at {iso_utc(budget.renews_at)}."
    )


def _binding_tokens(d: Decision, demand: Demand) -> tuple[str, WindowState]:
    """The token window that refused: the minute's if it did, else the day's."""
    minute, day = d.tokens_minute, d.tokens_day
    if minute is not None and (
        (d.retry_after is None and demand.total > minute.limit)
        or (d.retry_after is not None and minute.remaining < (d.granted or demand.total))
    ):
        return "minute", minute
    if day is not None:
        return "day", day
    assert minute is not None  # a token refusal has a token window
    return "minute", minute


class LimiterUnavailable(Exception):
    """The shared limits cannot be reached (Redis refused, reset or timed out), and the
    policy is to refuse rather than decide alone: a 503 `limiter_unavailable`."""


@dataclass(frozen=True, slots=True)
class LimiterStatus:
    """What `/health` and `/metrics` say of the limits."""

    backend: Literal["memory", "redis"]
    shared: bool  # decisions are taken together with the other replicas (in Redis) now
    error: str | None  # why not, while Redis cannot be reached
    local_decisions: int  # admissions this replica decided alone because Redis was away


class SpentTokens(Protocol):
    """The tokens a key or a user used since a moment, from the stored ledger (the
    store's `tokens_since`): where a budget's period starts from, so budgets survive
    restarts."""

    async def __call__(
        self, since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int: ...


async def nothing_spent(
    since: float, *, key_id: int | None = None, user_id: str | None = None
) -> int:
    """A ledger without rows (the limiter's tests and benches)."""
    return 0


class Reservation(Protocol):
    """What one admitted request holds of its key's limits until it ends."""

    decision: Decision

    async def settle(self, used: int) -> None:
        """The request used `used` tokens (prompt and completion): replace the
        reservation by that and release the in-flight permit. Only the first call
        counts."""

    async def refund(self) -> Decision:
        """Give everything back (no upstream ever saw the request): the key's windows
        after."""


class Limiter(Protocol):
    async def admit(self, key_id: int, limits: Limits, demand: Demand) -> Reservation:
        """Take `demand` from every limit of the key, or nothing and raise
        `LimitExceeded` (or `LimiterUnavailable`, when nothing may decide)."""

    async def windows(self, key_id: int, limits: Limits) -> Decision:
        """The key's limits now, without taking anything (or `LimiterUnavailable`)."""

    async def forget(self, key_id: int) -> None:
        """Drop the key's state (the key was deleted)."""

    def status(self) -> LimiterStatus:
        """Where decisions are taken now, without asking anything."""

    async def close(self) -> None:
        """Wait for the settlements under way, then let go of connections (at shutdown)."""
