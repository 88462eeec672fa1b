"""The in-flight permits one process holds in Redis, and the renewal of their leases.

A permit is a member of its key's sorted set (`buckets.lua`), scored with the moment
its lease runs out on Redis's clock. While the request runs, this process renews the
lease of every permit it holds, every third of a lease, in one pipeline; a process that
crashes renews nothing, so its permits run out within one lease and the key's requests
in flight are counted right again without anyone cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets

import redis.asyncio

from .base import LimiterUnavailable
from .redis_client import reach

log = logging.getLogger("llmgw")

# Seconds a permit lives unless renewed: long enough that a busy process renews in time
# (every LEASE / 3), short enough that a crashed one's permits are not missed for long.
LEASE = 30.0

# The expiry of each permit named (only if it still exists: a permit released or run
# out is not brought back), and of the set, which outlives none of its permits.
RENEW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', now + lease), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000))
return 0
"""


class Leases:
    """The permits this process holds, by permit: the key of its sorted set."""

    def __init__(self, client: redis.asyncio.Redis, lease: float = LEASE) -> None:
        self._client = client
        self._renew = client.register_script(RENEW)
        self.lease = lease
        # Unique across the replicas without asking anyone: a random prefix a process.
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)
        self._held: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def new_permit(self) -> str:
        return f"{self._prefix}:{next(self._count)}"

    def hold(self, permit: str, key: str) -> None:
        """The permit was taken: renew it until `release`."""
        self._held[permit] = key
        if self._task is None:
            self._task = asyncio.create_task(self._renew_all(), name="redis-leases")

    def release(self, permit: str) -> None:
        """Renew it no more (it is being removed, or, if Redis is gone, runs out)."""
        self._held.pop(permit, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _renew_all(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self._held:
                continue
            by_set: dict[str, list[str]] = {}
            for permit, key in self._held.items():
                by_set.setdefault(key, []).append(permit)
            try:
                await self._send(by_set)
            except LimiterUnavailable as exc:
                # The next round tries again; two more misses and the permits run out.
                log.debug("limits: leases not renewed: %s", exc)

    async def _send(self, by_set: dict[str, list[str]]) -> None:
        with reach():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, permits in by_set.items():
                    await self._renew(keys=[key], args=[self.lease, *permits], client=pipe)
                await pipe.execute()
