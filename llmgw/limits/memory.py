"""The limiter of one process: token buckets, in-flight counts and budgets in dicts.

Each bucket holds up to `limit` tokens and refills continuously at `limit / window`, so
a key can burst to its limit and then proceeds at the average rate. Requests per minute
and hour take one token a request; tokens per minute and day take the request's
reservation. A budget counts the tokens of its calendar period; the first use of a
budget in a period reads what the stored ledger already holds (so budgets survive
restarts), and from then on this process keeps the count.

Everything of one decision runs on the event loop between two awaits, so it is atomic
without a lock. The clock is injected so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from ..api_types import BudgetPeriod as Period
from ..clock import Clock, SystemClock
from .base import (
    CONCURRENCY_RETRY,
    DAY,
    EPSILON,
    HOUR,
    MINUTE,
    NOTHING,
    Budget,
    BudgetState,
    Decision,
    Demand,
    Kind,
    LimiterStatus,
    LimitExceeded,
    Limits,
    SpentTokens,
    WindowState,
    nothing_spent,
    seconds_until,
    window_state,
)
from .periods import Span, span_of


@dataclass(slots=True)
class _Bucket:
    capacity: float
    window: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.capacity / self.window)
        self.updated = now

    def resize(self, capacity: float) -> None:
        # A tier change keeps what the key has used: tokens never exceed the new size.
        self.capacity = capacity
        self.tokens = min(self.tokens, capacity)

    def give(self, tokens: float, now: float) -> None:
        """Tokens back (or, negative, charged: a bucket may go into debt)."""
        self.refill(now)
        self.tokens = min(self.capacity, self.tokens + tokens)

    def seconds_until(self, tokens: float) -> float:
        return seconds_until(tokens, self.tokens, self.capacity, self.window)

    def state(self) -> WindowState:
        return window_state(self.tokens, self.capacity, self.window)


class _Key:
    """What one key holds: its buckets and its requests in flight."""

    __slots__ = ("hour", "in_flight", "minute", "tokens_day", "tokens_minute")

    def __init__(self, limits: Limits, now: float) -> None:
        self.minute = _Bucket(limits.requests_per_minute, MINUTE, limits.requests_per_minute, now)
        self.hour = _Bucket(limits.requests_per_hour, HOUR, limits.requests_per_hour, now)
        self.tokens_minute: _Bucket | None = None
        self.tokens_day: _Bucket | None = None
        self.in_flight = 0

    def fit(self, limits: Limits, now: float) -> None:
        """Refill every bucket to `now`, at the sizes `limits` give them now."""
        for bucket, capacity in ((self.minute, limits.requests_per_minute),
                                 (self.hour, limits.requests_per_hour)):  # fmt: skip
            bucket.refill(now)
            if bucket.capacity != capacity:
                bucket.resize(capacity)
        self.tokens_minute = _fitted(self.tokens_minute, limits.tokens_per_minute, MINUTE, now)
        self.tokens_day = _fitted(self.tokens_day, limits.tokens_per_day, DAY, now)

    def token_buckets(self) -> tuple[_Bucket, ...]:
        return tuple(b for b in (self.tokens_minute, self.tokens_day) if b is not None)


def _fitted(bucket: _Bucket | None, capacity: int, window: float, now: float) -> _Bucket | None:
    if not capacity:
        return None  # unlimited: a limit set again later starts full
    if bucket is None:
        return _Bucket(capacity, window, capacity, now)
    bucket.refill(now)
    if bucket.capacity != capacity:
        bucket.resize(capacity)
    return bucket


class _Spent:
    """A budget's tokens used in one period."""

    __slots__ = ("period", "used")

    def __init__(self, period: str, used: float) -> None:
        self.period, self.used = period, used


@dataclass(frozen=True, slots=True)
class _Charge:
    """One budget a request is charged to."""

    scope: str  # `key` or `user`
    budget: Budget
    span: Span
    spent: _Spent

    def state(self) -> BudgetState:
        return BudgetState(
            self.scope, self.budget.tokens, self.spent.used, self.budget.period, self.span.end
        )


class _Held:
    """A request's reservation in this process."""

    __slots__ = ("_charges", "_key", "_key_id", "_limiter", "_limits", "_open", "decision")

    def __init__(
        self,
        limiter: MemoryLimiter,
        key_id: int,
        key: _Key,
        limits: Limits,
        charges: tuple[_Charge, ...],
        decision: Decision,
    ) -> None:
        self._limiter, self._key_id, self._key, self._limits = limiter, key_id, key, limits
        self._charges = charges
        self.decision = decision
        self._open = True

    async def settle(self, used: int) -> None:
        self.settle_now(used)

    def settle_now(self, used: int) -> None:
        if not self._open:
            return
        self._open = False
        now = self._limiter.clock.monotonic()
        returned = self.decision.granted - used
        if returned:
            for bucket in self._key.token_buckets():
                bucket.give(returned, now)
            for charge in self._charges:
                charge.spent.used -= returned
        self._key.in_flight -= 1

    async def refund(self) -> Decision:
        if self._open:
            now = self._limiter.clock.monotonic()
            self._key.minute.give(1, now)
            self._key.hour.give(1, now)
            self.settle_now(0)
        self.decision = self._limiter.state(self._key_id, self._limits, self._charges)
        return self.decision


class MemoryLimiter:
    """The limits of every key that has made a request since start."""

    def __init__(self, clock: Clock | None = None, spent: SpentTokens = nothing_spent) -> None:
        self.clock = clock or SystemClock()
        self._spent_since = spent
        self._keys: dict[int, _Key] = {}
        # Each budget's count, by `key:ID` or `user:NAME`: its current period only.
        self._spent: dict[str, _Spent] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        # The current span of each kind of period: working it out takes datetime
        # arithmetic, the largest part of an admission with two budgets.
        self._spans: dict[str, Span] = {}

    async def admit(self, key_id: int, limits: Limits, demand: Demand) -> _Held:
        charges = (
            await self._charges(key_id, limits) if limits.key_budget or limits.user_budget else ()
        )
        return self.take(key_id, limits, demand, charges)

    async def windows(self, key_id: int, limits: Limits) -> Decision:
        charges = (
            await self._charges(key_id, limits) if limits.key_budget or limits.user_budget else ()
        )
        return self.state(key_id, limits, charges)

    async def forget(self, key_id: int) -> None:
        self._keys.pop(key_id, None)
        self._spent.pop(f"key:{key_id}", None)

    def status(self) -> LimiterStatus:
        return LimiterStatus(backend="memory", shared=False, error=None, local_decisions=0)

    async def close(self) -> None:
        pass  # settling is immediate: nothing is under way

    # The synchronous core, also what the unit tests and the bench drive.

    def take(
        self,
        key_id: int,
        limits: Limits,
        demand: Demand = NOTHING,
        charges: tuple[_Charge, ...] = (),
    ) -> _Held:
        """Admit the request or raise `LimitExceeded`; `charges` are its budgets, loaded."""
        now = self.clock.monotonic()
        key = self._key(key_id, limits, now)
        refused, retry_after, granted = self._decide(key, limits, demand, charges)
        if refused is None:
            for bucket in (key.minute, key.hour):
                bucket.tokens -= 1
            for bucket in key.token_buckets():
                bucket.tokens -= granted
            for charge in charges:
                charge.spent.used += granted
            key.in_flight += 1
        decision = self._decision(key, limits, charges, refused, retry_after, granted)
        if refused is not None:
            raise LimitExceeded(decision, limits, demand)
        return _Held(self, key_id, key, limits, charges, decision)

    def acquire(self, key_id: int, limits: Limits, demand: Demand = NOTHING) -> Decision:
        """`take`, settled at once as having used what it reserved: the decision alone
        (the refill arithmetic's tests and the bench)."""
        try:
            held = self.take(key_id, limits, demand)
        except LimitExceeded as refused:
            return refused.decision
        held.settle_now(held.decision.granted)
        return held.decision

    def state(self, key_id: int, limits: Limits, charges: tuple[_Charge, ...] = ()) -> Decision:
        """The key's limits now, without taking anything."""
        key = self._key(key_id, limits, self.clock.monotonic())
        return self._decision(key, limits, charges, None, 0.0, 0)

    def _decide(
        self, key: _Key, limits: Limits, demand: Demand, charges: tuple[_Charge, ...]
    ) -> tuple[Kind | None, float | None, int]:
        """What refuses the request (None: nothing), when to try again, and how many
        tokens it is granted. The order (and buckets.lua's): a budget, a request larger
        than a token bucket, the buckets, then concurrency."""
        granted = demand.total
        for charge in charges:
            left = charge.budget.tokens - charge.spent.used
            if not granted or left + EPSILON >= granted:
                continue  # (a request of no tokens, the model list, passes any budget)
            if demand.completion and left + EPSILON >= demand.least:
                granted = math.floor(left + EPSILON)  # max_tokens lowered to what is left
                continue
            return "budget", max(0.0, charge.span.end - self.clock.wall()), granted
        tokens = key.token_buckets()
        if any(granted > bucket.capacity for bucket in tokens):
            return "tokens", None, granted
        waits: list[tuple[float, Kind]] = [
            (bucket.seconds_until(1), "requests")
            for bucket in (key.minute, key.hour)
            if bucket.tokens < 1 - EPSILON
        ]
        waits += [
            (bucket.seconds_until(granted), "tokens")
            for bucket in tokens
            if bucket.tokens < granted - EPSILON
        ]
        if waits:
            wait, kind = max(waits)
            return kind, wait, granted
        if limits.max_in_flight and key.in_flight >= limits.max_in_flight:
            return "concurrency", CONCURRENCY_RETRY, granted
        return None, 0.0, granted

    def _decision(
        self,
        key: _Key,
        limits: Limits,
        charges: tuple[_Charge, ...],
        refused: Kind | None,
        retry_after: float | None,
        granted: int,
    ) -> Decision:
        budgets = {charge.scope: charge.state() for charge in charges}
        return Decision(
            allowed=refused is None,
            retry_after=retry_after,
            minute=key.minute.state(),
            hour=key.hour.state(),
            tokens_minute=key.tokens_minute.state() if key.tokens_minute else None,
            tokens_day=key.tokens_day.state() if key.tokens_day else None,
            in_flight=(key.in_flight, limits.max_in_flight) if limits.max_in_flight else None,
            key_budget=budgets.get("key"),
            user_budget=budgets.get("user"),
            refused=refused,
            granted=granted,
        )

    def _key(self, key_id: int, limits: Limits, now: float) -> _Key:
        key = self._keys.get(key_id)
        if key is None:
            key = self._keys[key_id] = _Key(limits, now)
        key.fit(limits, now)
        return key

    async def _charges(self, key_id: int, limits: Limits) -> tuple[_Charge, ...]:
        """The key's budgets this period, each read from the ledger on its first use."""
        wall = self.clock.wall()
        charges = []
        for scope, name, budget in (
            ("key", f"key:{key_id}", limits.key_budget),
            ("user", f"user:{limits.user_id}", limits.user_budget),
        ):
            if budget is None:
                continue
            span = self._span(budget.period, wall)
            spent = self._spent.get(name)
            if spent is None or spent.period != span.name:
                spent = await self._load(name, span, key_id, limits.user_id)
            charges.append(_Charge(scope, budget, span, spent))
        return tuple(charges)

    def _span(self, period: Period, wall: float) -> Span:
        """`span_of(period, wall)`, worked out again only once `wall` leaves the span."""
        span = self._spans.get(period)
        if span is None or not span.start <= wall < span.end:
            span = self._spans[period] = span_of(period, wall)
        return span

    async def _load(self, name: str, span: Span, key_id: int, user_id: str) -> _Spent:
        """The budget's count for `span`, from the ledger; one read however many
        requests wait for it."""
        loading = self._loading.get((name, span.name))
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[(name, span.name)] = loading
            try:
                if name.startswith("key:"):
                    used = await self._spent_since(span.start, key_id=key_id)
                else:
                    used = await self._spent_since(span.start, user_id=user_id)
                current = self._spent.get(name)
                # Requests admitted meanwhile in this period were counted by no one yet.
                if current is None or current.period != span.name:
                    self._spent[name] = _Spent(span.name, used)
                loading.set_result(None)
            except Exception as exc:
                loading.set_exception(exc)
                loading.exception()  # retrieved: the waiters (if any) raise it themselves
                raise
            except BaseException:
                loading.cancel()
                raise
            finally:
                del self._loading[(name, span.name)]
        else:
            await asyncio.shield(loading)
        return self._spent[name]
