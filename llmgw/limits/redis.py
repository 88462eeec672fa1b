"""The limits the replicas share, in Redis: each admission is one Lua script call.

`buckets.lua` holds every limit of a key and decides as `memory.py` does — the same
arithmetic, the same order, all or nothing — in one round trip (EVALSHA, loaded again on
NOSCRIPT), the buckets on Redis's own clock, since the replicas' clocks differ. Its
answer (what each limit holds) becomes a `Decision` through the functions the memory
limiter uses, so the same state gives the same headers from either backend.

Keys. All state one request touches shares the hash tag of its key's user, so a Redis
Cluster keeps it in one slot (a user's budget is shared by all the user's keys); the
tag spells the user id's UTF-8 in hex, so no character of an id can break it:

    llmgw:{u:HEX}:key:ID:requests:minute   hashes: tokens, updated, capacity; each
    llmgw:{u:HEX}:key:ID:requests:hour       expiring once it would be full again
    llmgw:{u:HEX}:key:ID:tokens:minute
    llmgw:{u:HEX}:key:ID:tokens:day
    llmgw:{u:HEX}:key:ID:inflight          sorted set: permit -> its lease's end
    llmgw:{u:HEX}:key:ID:budget:month:2026-12   the tokens counted against a budget
    llmgw:{u:HEX}:user:budget:month:2026-12      in a period; kept a day past its end

A budget's counter starts, in each period, from the stored ledger: when it does not
exist the script says so instead of guessing, this process reads `spent` (once, however
many requests wait for it) and calls again with that base, which the script takes only
if the counter is still missing. In-flight permits are leased (`leases`), so those of a
replica that crashed run out by themselves.

A Redis that cannot be reached raises `LimiterUnavailable`; what the gateway does then
is `failover`'s policy. Nothing is retried: a script sent again after a lost answer
could take twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import redis.asyncio
import redis.exceptions

from ..clock import Clock, SystemClock
from .base import (
    CONCURRENCY_RETRY,
    DAY,
    EPSILON,
    HOUR,
    MINUTE,
    Budget,
    BudgetState,
    Decision,
    Demand,
    Kind,
    LimiterStatus,
    LimiterUnavailable,
    LimitExceeded,
    Limits,
    SpentTokens,
    nothing_spent,
    seconds_until,
    window_state,
)
from .leases import LEASE, Leases
from .periods import Span, span_of
from .redis_client import SOCKET_TIMEOUT, connect, reach

SCRIPT = (resources.files(__package__) / "buckets.lua").read_text(encoding="utf-8")
# Seconds `close` waits for the settlements under way before closing the connections.
SETTLE_WAIT = 2.0

Mode = Literal["take", "peek", "settle", "refund"]
Scope = Literal["key", "user"]


@dataclass(frozen=True, slots=True)
class _Charge:
    """One budget a request is counted against, in the period it falls in."""

    scope: Scope
    budget: Budget
    span: Span
    counter: str  # its key in Redis

    def state(self, used: float) -> BudgetState:
        return BudgetState(self.scope, self.budget.tokens, used, self.budget.period, self.span.end)


@dataclass(frozen=True, slots=True)
class _Call:
    """What a request asks of `buckets.lua`: its keys, in the script's order."""

    key_id: int
    limits: Limits
    keys: tuple[str, ...]
    charges: tuple[_Charge, ...]

    @property
    def permits(self) -> str:
        return self.keys[4]

    def args(
        self,
        mode: Mode,
        bases: dict[Scope, int],
        amount: int = 0,
        demand: Demand | None = None,
        permit: str = "",
        lease: float = LEASE,
    ) -> list[str | int | float]:
        limits = self.limits
        args: list[str | int | float] = [
            mode,
            limits.requests_per_minute, MINUTE,
            limits.requests_per_hour, HOUR,
            limits.tokens_per_minute, MINUTE,
            limits.tokens_per_day, DAY,
            limits.max_in_flight,
        ]  # fmt: skip
        charges = {charge.scope: charge for charge in self.charges}
        for scope in ("key", "user"):
            charge = charges.get(scope)
            if charge is None:
                args += ["", "", ""]
            else:
                base = bases.get(charge.scope)
                expiry = math.ceil(charge.span.end + DAY)
                args += [charge.budget.tokens, "" if base is None else base, expiry]
        least, lowerable = (demand.least, int(bool(demand.completion))) if demand else (0, 0)
        return [*args, amount, least, lowerable, permit, lease]


class _Held:
    """A request's reservation in Redis."""

    __slots__ = ("_call", "_limiter", "_open", "_permit", "decision")

    def __init__(self, limiter: RedisLimiter, call: _Call, permit: str, decision: Decision):
        self._limiter, self._call, self._permit = limiter, call, permit
        self.decision = decision
        self._open = True

    async def settle(self, used: int) -> None:
        if self._open:
            self._open = False
            await self._limiter.finish(
                self._call, "settle", self.decision.granted - used, self._permit
            )

    async def refund(self) -> Decision:
        if not self._open:
            self.decision = await self._limiter.windows(self._call.key_id, self._call.limits)
            return self.decision
        self._open = False
        reply = await self._limiter.finish(
            self._call, "refund", self.decision.granted, self._permit
        )
        assert reply is not None  # a refund always asks Redis
        self.decision = self._limiter.decision(self._call, reply)
        return self.decision


class RedisLimiter:
    """Every limit of every key, in the Redis at the other end of `client`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str = "llmgw",
        *,
        clock: Clock | None = None,
        spent: SpentTokens = nothing_spent,
        lease: float = LEASE,
    ) -> None:
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._prefix = prefix
        self._clock = clock or SystemClock()
        self._spent = spent
        self._leases = Leases(client, lease)
        # Settlements and refunds under way: they outlive a cancelled request.
        self._finishing: set[asyncio.Task[list[bytes] | None]] = set()
        # The ledger reads under way, by budget counter: one a counter.
        self._loading: dict[str, asyncio.Task[int]] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "llmgw",
        timeout: float = SOCKET_TIMEOUT,
        *,
        clock: Clock | None = None,
        spent: SpentTokens = nothing_spent,
        lease: float = LEASE,
    ) -> RedisLimiter:
        """A limiter with a client of its own (`connect`)."""
        return cls(connect(url, timeout), prefix, clock=clock, spent=spent, lease=lease)

    async def admit(self, key_id: int, limits: Limits, demand: Demand) -> _Held:
        call = self._call(key_id, limits)
        permit = self._leases.new_permit() if limits.max_in_flight else ""
        reply = await self._run(call, "take", demand.total, demand, permit)
        decision = self.decision(call, reply)
        if not decision.allowed:
            raise LimitExceeded(decision, limits, demand)
        # Held (and renewed) only once surely taken: a permit whose answer was lost, the
        # request cancelled meanwhile, say, is renewed by no one and runs out.
        if permit:
            self._leases.hold(permit, call.permits)
        return _Held(self, call, permit, decision)

    async def windows(self, key_id: int, limits: Limits) -> Decision:
        call = self._call(key_id, limits)
        return self.decision(call, await self._run(call, "peek"))

    async def forget(self, key_id: int) -> None:
        # The key's user (its keys' tag) is not known here: a scan, as rare as deleting
        # a key is.
        pattern = f"{self._prefix}:{{u:*}}:key:{key_id}:*"
        with reach():
            names = [name async for name in self._client.scan_iter(match=pattern, count=1000)]
            if names:
                await self._client.delete(*names)

    def status(self) -> LimiterStatus:
        return LimiterStatus(backend="redis", shared=True, error=None, local_decisions=0)

    async def ping(self) -> None:
        """Return once Redis answers as it should, or raise `LimiterUnavailable`."""
        try:
            await self._client.ping()
        except redis.exceptions.RedisError as exc:  # NOAUTH, say: not usable either
            raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections no request holds: after Redis went away they
        lead nowhere, and each would fail one request once Redis is back."""
        with contextlib.suppress(OSError, redis.exceptions.RedisError):  # closed either way
            await self._client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self._leases.close()
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=SETTLE_WAIT)
        await self._client.aclose()

    async def finish(
        self, call: _Call, mode: Literal["settle", "refund"], returned: int, permit: str
    ) -> list[bytes] | None:
        """Settle or refund a reservation, even if the request is cancelled meanwhile
        (the call runs as a task of its own, which `close` waits for)."""
        if permit:
            self._leases.release(permit)
        if mode == "settle" and not returned and not permit:
            return None  # nothing to give back, nothing to release
        task = asyncio.create_task(self._run(call, mode, returned, permit=permit))
        self._finishing.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[list[bytes] | None]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the request that awaited it may be gone

    def decision(self, call: _Call, reply: list[bytes]) -> Decision:
        """The script's answer as the memory limiter would have put it."""
        limits = call.limits
        refused, granted = reply[1].decode(), int(reply[2])
        requests = [
            (float(reply[3]), limits.requests_per_minute, MINUTE),
            (float(reply[4]), limits.requests_per_hour, HOUR),
        ]
        tokens = [
            (float(held), capacity, window)
            for held, capacity, window in (
                (reply[5], limits.tokens_per_minute, MINUTE),
                (reply[6], limits.tokens_per_day, DAY),
            )
            if held
        ]
        budgets: dict[str, BudgetState] = {
            charge.scope: charge.state(float(reply[8 if charge.scope == "key" else 9]))
            for charge in call.charges
        }
        kind: Kind | None
        retry_after: float | None
        if refused.startswith("budget:"):
            end = budgets[refused.removeprefix("budget:")].renews_at
            kind, retry_after = "budget", max(0.0, end - self._clock.wall())
        elif refused == "tokens":
            kind, retry_after = "tokens", None
        elif refused == "concurrency":
            kind, retry_after = "concurrency", CONCURRENCY_RETRY
        elif refused == "buckets":
            retry_after, kind = _longest_wait(requests, tokens, granted)
        else:
            kind, retry_after = None, 0.0
        minute, hour = (window_state(*bucket) for bucket in requests)
        token_states = iter(window_state(*bucket) for bucket in tokens)
        return Decision(
            allowed=kind is None,
            retry_after=retry_after,
            minute=minute,
            hour=hour,
            tokens_minute=next(token_states) if limits.tokens_per_minute else None,
            tokens_day=next(token_states) if limits.tokens_per_day else None,
            in_flight=(int(reply[7]), limits.max_in_flight) if limits.max_in_flight else None,
            key_budget=budgets.get("key"),
            user_budget=budgets.get("user"),
            refused=kind,
            granted=granted,
        )

    def _call(self, key_id: int, limits: Limits) -> _Call:
        tag = f"{self._prefix}:{{u:{limits.user_id.encode().hex()}}}"
        own = f"{tag}:key:{key_id}"
        keys = [f"{own}:{name}" for name in _BUCKETS]
        keys.append(f"{own}:inflight")
        wall = self._clock.wall()
        charges = []
        sources: tuple[tuple[Scope, Budget | None, str], ...] = (
            ("key", limits.key_budget, own),
            ("user", limits.user_budget, f"{tag}:user"),
        )
        for scope, budget, where in sources:
            if budget is not None:
                span = span_of(budget.period, wall)
                counter = f"{where}:budget:{span.name}"
                charges.append(_Charge(scope, budget, span, counter))
                keys.append(counter)
        return _Call(key_id, limits, tuple(keys), tuple(charges))

    async def _run(
        self,
        call: _Call,
        mode: Mode,
        amount: int = 0,
        demand: Demand | None = None,
        permit: str = "",
    ) -> list[bytes]:
        """One call of the script; again with the ledger's base of each budget counter
        it found missing (never more than once a budget)."""
        bases: dict[Scope, int] = {}
        while True:
            args = call.args(mode, bases, amount, demand, permit, self._leases.lease)
            with reach():
                reply: list[bytes] = await self._script(keys=call.keys, args=args)
            if reply[0] != b"ledger":
                return reply
            for charge in call.charges:
                if charge.scope.encode() in reply[1:]:
                    if charge.scope in bases:
                        raise RuntimeError(f"buckets.lua ignored the base of {charge.counter}")
                    bases[charge.scope] = await self._base(charge, call)

    async def _base(self, charge: _Charge, call: _Call) -> int:
        """The tokens the ledger holds for the budget's period: one read a counter,
        however many requests wait for it."""
        loading = self._loading.get(charge.counter)
        if loading is None:
            since = charge.span.start
            loading = asyncio.create_task(
                self._spent(since, key_id=call.key_id)
                if charge.scope == "key"
                else self._spent(since, user_id=call.limits.user_id)
            )
            self._loading[charge.counter] = loading
            loading.add_done_callback(functools.partial(self._loaded, charge.counter))
        return await asyncio.shield(loading)

    def _loaded(self, counter: str, task: asyncio.Task[int]) -> None:
        del self._loading[counter]
        if not task.cancelled():
            task.exception()  # retrieved: each waiter raises it itself


_BUCKETS = ("requests:minute", "requests:hour", "tokens:minute", "tokens:day")


def _longest_wait(
    requests: Sequence[tuple[float, int, float]],
    tokens: Sequence[tuple[float, int, float]],
    granted: int,
) -> tuple[float, Kind]:
    """Which bucket refused and when to try again: the longest wait, as memory.py's
    `_decide` finds it (a tie goes to tokens there too)."""
    waits: list[tuple[float, Kind]] = [
        (seconds_until(1, held, capacity, window), "requests")
        for held, capacity, window in requests
        if held < 1 - EPSILON
    ]
    waits += [
        (seconds_until(granted, held, capacity, window), "tokens")
        for held, capacity, window in tokens
        if held < granted - EPSILON
    ]
    return max(waits)
