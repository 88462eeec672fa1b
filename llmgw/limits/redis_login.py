"""The login throttle's counts in Redis, shared by the replicas: each attempt is one Lua
script (`login.lua`: the address's window and the username's lock, checked and counted
together, on Redis's clock), so guesses spread over replicas, or sent at once, are
counted as one gateway would count them.

Keys: `llmgw:{login}:address:ADDRESS` (a list of failure times, expiring after the
window) and `llmgw:{login}:username:NAME` (the streak, forgotten after a day without
failures). The hash tag `{login}` puts both in one Redis Cluster slot, as one script
call needs. A Redis that cannot be reached raises `LimiterUnavailable`
(`redis_client.reach`); `login.FailoverThrottle` then counts in this process.
"""

from __future__ import annotations

from importlib import resources

import redis.asyncio

from .login import USERNAME_CHARS, Lockout, ThrottlePolicy
from .redis_client import connect, reach

SCRIPT = (resources.files(__package__) / "login.lua").read_text(encoding="utf-8")
# Seconds a username's streak is kept after its last failure (in memory, until the
# table is full).
STREAK_TTL = 86_400
_REASONS = {1: "from this address", 2: "for this username"}


class RedisThrottle:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str = "llmgw",
        policy: ThrottlePolicy | None = None,
    ) -> None:
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._prefix = prefix
        p = policy or ThrottlePolicy()
        self._args = [
            p.address_limit, p.address_window, p.username_limit, p.first_lock, p.max_lock,
            STREAK_TTL,
        ]  # fmt: skip

    @classmethod
    def from_url(cls, url: str, timeout: float) -> RedisThrottle:
        return cls(connect(url, timeout))

    async def refuse(self, address: str, username: str) -> Lockout | None:
        with reach():
            reply = await self._script(keys=self._keys(address, username), args=self._args)
        kind = int(reply[0])
        return Lockout(_REASONS[kind], float(reply[1])) if kind else None

    async def clear(self, address: str, username: str) -> None:
        with reach():
            await self._client.delete(*self._keys(address, username))

    async def close(self) -> None:
        await self._client.aclose()

    def _keys(self, address: str, username: str) -> list[str]:
        base = f"{self._prefix}:{{login}}"
        return [f"{base}:address:{address}", f"{base}:username:{username[:USERNAME_CHARS]}"]
