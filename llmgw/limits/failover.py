"""The policy for when Redis cannot be reached ([limits] on_redis_error).

`local`: this replica decides alone with its own `MemoryLimiter` (each replica then
grants a key its full limit: N replicas, up to N times the limit) and counts those
decisions; `deny`: requests are refused with a 503 `limiter_unavailable`. Either way
`/health` says `degraded` and why, one WARNING is logged when it starts and one when
Redis answers again, and while it lasts Redis is probed (PING) every `PROBE_INTERVAL`
in the background, so no request waits on a Redis known to be gone; the first answer
brings the shared limits back. A reservation is settled where it was taken: one
admitted locally settles locally; one admitted in Redis settles in Redis, or, if Redis
has gone since, stays counted there (its tokens until they refill, its in-flight permit
until its lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from .base import Decision, Demand, LimiterStatus, LimiterUnavailable, Limits, Reservation
from .memory import MemoryLimiter
from .redis import RedisLimiter

log = logging.getLogger("llmgw")

# Seconds between two probes of a Redis that could not be reached.
PROBE_INTERVAL = 1.0


class _SharedHeld:
    """A reservation admitted in Redis."""

    __slots__ = ("_held", "_limiter", "decision")

    def __init__(self, held: Reservation, limiter: FailoverLimiter) -> None:
        self._held, self._limiter = held, limiter
        self.decision = held.decision

    async def settle(self, used: int) -> None:
        try:
            await self._held.settle(used)
        except LimiterUnavailable as exc:
            # Nothing more to log than going away says. What was reserved stays counted
            # in Redis (the safe side): the tokens refill, the permit's lease runs out.
            self._limiter.went_away(exc)

    async def refund(self) -> Decision:
        try:
            self.decision = await self._held.refund()
        except LimiterUnavailable as exc:
            self._limiter.went_away(exc)  # stays counted, as when settling
        return self.decision


class FailoverLimiter:
    """`shared` while Redis answers, else `local` or a refusal, as `policy` says."""

    def __init__(
        self,
        shared: RedisLimiter,
        local: MemoryLimiter,
        policy: Literal["local", "deny"],
        where: str,
    ) -> None:
        self._shared, self._local, self._policy = shared, local, policy
        self._where = where  # the server, for the log (no password)
        self._error: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self._local_decisions = 0

    async def start(self) -> None:
        """Ask Redis once, so the log and /health are right from the start."""
        try:
            await self._shared.ping()
        except LimiterUnavailable as exc:
            self.went_away(exc)
        else:
            log.info("limits: shared in redis at %s", self._where)

    async def admit(self, key_id: int, limits: Limits, demand: Demand) -> Reservation:
        if self._error is None:
            try:
                return _SharedHeld(await self._shared.admit(key_id, limits, demand), self)
            except LimiterUnavailable as exc:
                self.went_away(exc)
        if self._policy == "deny":
            raise self._unavailable()
        self._local_decisions += 1
        # A local reservation settles locally, whatever Redis does meanwhile.
        return await self._local.admit(key_id, limits, demand)

    async def windows(self, key_id: int, limits: Limits) -> Decision:
        if self._error is None:
            try:
                return await self._shared.windows(key_id, limits)
            except LimiterUnavailable as exc:
                self.went_away(exc)
        if self._policy == "deny":
            raise self._unavailable()
        return await self._local.windows(key_id, limits)

    async def forget(self, key_id: int) -> None:
        await self._local.forget(key_id)
        if self._error is None:
            try:
                await self._shared.forget(key_id)
            except LimiterUnavailable as exc:
                # Left in Redis, the state expires within its window; a deleted key's id
                # is never given to another key.
                self.went_away(exc)

    def status(self) -> LimiterStatus:
        return LimiterStatus(
            backend="redis",
            shared=self._error is None,
            error=self._error,
            local_decisions=self._local_decisions,
        )

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._shared.close()

    def went_away(self, exc: LimiterUnavailable) -> None:
        """Redis did not answer: decide without it until a probe says it is back."""
        if self._error is None:
            then = (
                "this replica decides alone, with its own limits"
                if self._policy == "local"
                else "requests are refused (503 limiter_unavailable)"
            )
            log.warning(
                "limits: redis at %s cannot be reached (%s); until it answers, %s",
                self._where,
                exc,
                then,
            )
        self._error = str(exc)
        if self._probe is None:
            self._probe = asyncio.create_task(self._until_back(), name="redis-probe")

    def _unavailable(self) -> LimiterUnavailable:
        return LimiterUnavailable(
            "Rate limits cannot be checked right now (the gateway's limit store, Redis, "
            "does not answer), so requests are refused. Please try again shortly."
        )

    async def _until_back(self) -> None:
        await self._shared.drop_idle_connections()
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self._shared.ping()
            except LimiterUnavailable as exc:
                self._error = str(exc)
                continue
            break
        self._error, self._probe = None, None
        log.warning("limits: redis at %s answers again: limits are shared again", self._where)
