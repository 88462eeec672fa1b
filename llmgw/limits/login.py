"""The login throttle's counts (`llmgw.admin.remote` states the policy): in this
process (`LoginThrottle`), or shared by the replicas in Redis (`redis_login`), with
this process's counts to fall back on while Redis is away (`FailoverThrottle`).

With N replicas each counting alone, a guesser spread over them would get N times the
guesses; in Redis they count together.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Settings
from . import shown
from .base import LimiterUnavailable

if TYPE_CHECKING:
    from .redis_login import RedisThrottle

log = logging.getLogger("llmgw")


class Throttle(Protocol):
    async def refuse(self, address: str, username: str) -> Lockout | None:
        """A lockout that refuses this login before its password is checked, or None:
        then the attempt counts as a failure (until `clear`)."""

    async def clear(self, address: str, username: str) -> None:
        """A login succeeded: its address's and its username's counts go."""

    async def close(self) -> None: ...


# Admin usernames have at most 64 characters: a guess is counted under its first 100,
# so a table full of long guesses stays small.
USERNAME_CHARS = 100


@dataclass(frozen=True)  # no slots: the defaults stay readable as class attributes
class ThrottlePolicy:
    """The numbers of the policy (`llmgw.admin.remote` says what they mean)."""

    address_limit: int = 5
    address_window: float = 300.0
    username_limit: int = 5
    first_lock: float = 1.0
    max_lock: float = 300.0


@dataclass(frozen=True, slots=True)
class Lockout:
    """Why a login is refused before its password is checked, and for how long."""

    reason: str  # "from this address" or "for this username"
    seconds: float


@dataclass(slots=True)
class _Streak:
    failures: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins per client address (a sliding window) and per username (a growing
    lock), on an injected clock. Each table keeps at most `capacity` entries, dropping
    the least recently failed, so memory stays bounded whoever is asking."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        address_limit: int = ThrottlePolicy.address_limit,
        address_window: float = ThrottlePolicy.address_window,
        username_limit: int = ThrottlePolicy.username_limit,
        first_lock: float = ThrottlePolicy.first_lock,
        max_lock: float = ThrottlePolicy.max_lock,
        capacity: int = 10_000,
    ) -> None:
        self._clock = clock
        self._address_limit = address_limit
        self._address_window = address_window
        self._username_limit = username_limit
        self._first_lock = first_lock
        self._max_lock = max_lock
        self._capacity = capacity
        self._addresses: OrderedDict[str, deque[float]] = OrderedDict()
        self._usernames: OrderedDict[str, _Streak] = OrderedDict()

    def __len__(self) -> int:
        """Entries held, addresses and usernames together."""
        return len(self._addresses) + len(self._usernames)

    def attempt(self, address: str, username: str) -> Lockout | None:
        """A lockout that refuses this login, or None: then the attempt is counted as a
        failure (until `succeeded` clears the counts)."""
        now = self._clock()
        username = username[:USERNAME_CHARS]
        if wait := self._address_wait(address, now):
            return Lockout("from this address", wait)
        streak = self._usernames.get(username)
        if streak is not None and streak.locked_until > now:
            return Lockout("for this username", streak.locked_until - now)
        self._fail_address(address, now)
        self._fail_username(username, now)
        return None

    def succeeded(self, address: str, username: str) -> None:
        self._addresses.pop(address, None)
        self._usernames.pop(username[:USERNAME_CHARS], None)

    # As a `Throttle`:
    async def refuse(self, address: str, username: str) -> Lockout | None:
        return self.attempt(address, username)

    async def clear(self, address: str, username: str) -> None:
        self.succeeded(address, username)

    async def close(self) -> None:
        pass

    def _address_wait(self, address: str, now: float) -> float:
        failures = self._addresses.get(address)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self._address_window:
            failures.popleft()
        if len(failures) < self._address_limit:
            return 0.0
        return failures[0] + self._address_window - now

    def _fail_address(self, address: str, now: float) -> None:
        failures = self._addresses.pop(address, None) or deque(maxlen=self._address_limit)
        failures.append(now)
        self._addresses[address] = failures  # now the most recent
        _bound(self._addresses, self._capacity)

    def _fail_username(self, username: str, now: float) -> None:
        streak = self._usernames.pop(username, None) or _Streak()
        streak.failures += 1
        if streak.failures >= self._username_limit:
            doublings = streak.failures - self._username_limit
            # (bounded: a long streak's lock would overflow a float)
            lock = self._first_lock * 2 ** min(doublings, 64)
            streak.locked_until = now + min(lock, self._max_lock)
        self._usernames[username] = streak
        _bound(self._usernames, self._capacity)


def _bound(table: OrderedDict[str, Any], capacity: int) -> None:
    while len(table) > capacity:
        table.popitem(last=False)


class FailoverThrottle:
    """The counts in Redis while it answers, else this process's own: logged once when
    Redis goes, once when it is back (each login tries Redis again: logins are few)."""

    def __init__(self, shared: RedisThrottle, local: LoginThrottle, where: str) -> None:
        self._shared, self._local, self._where = shared, local, where
        self.error: str | None = None

    async def refuse(self, address: str, username: str) -> Lockout | None:
        try:
            lockout = await self._shared.refuse(address, username)
        except LimiterUnavailable as exc:
            self._went_away(exc)
            return self._local.attempt(address, username)
        self._back()
        return lockout

    async def clear(self, address: str, username: str) -> None:
        self._local.succeeded(address, username)
        try:
            await self._shared.clear(address, username)
        except LimiterUnavailable as exc:
            self._went_away(exc)  # left in Redis, the counts expire
        else:
            self._back()

    async def close(self) -> None:
        await self._shared.close()

    def _went_away(self, exc: LimiterUnavailable) -> None:
        if self.error is None:
            log.warning(
                "login throttle: redis at %s cannot be reached (%s); until it answers, "
                "this replica counts failed logins alone",
                self._where,
                exc,
            )
        self.error = str(exc)

    def _back(self) -> None:
        if self.error is not None:
            self.error = None
            log.warning("login throttle: redis at %s answers again: counts are shared", self._where)


def open_throttle(settings: Settings, clock: Callable[[], float]) -> Throttle:
    """The throttle of [limits] backend: this process's, or Redis's (a client of its own,
    from the same URL as the limiter's) falling back on this process's."""
    local = LoginThrottle(clock)
    if settings.limits.backend == "memory":
        return local
    from .redis_login import RedisThrottle  # not at the top: see open_limiter

    return FailoverThrottle(
        RedisThrottle.from_url(settings.limits.redis_url, settings.limits.redis_timeout),
        local,
        shown(settings.limits.redis_url),
    )
