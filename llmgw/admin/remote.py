"""The remote door: the admin API under `/admin/api` on the public port, behind login.

`POST /admin/api/login` trades an admin user's password for a bearer token (a signed
JWT that expires); every other route needs one. A token is refused once it expires,
once its user is disabled, and once the user's password has changed.

Failed logins are throttled two ways (`LoginThrottle`), each answered 429
`login_throttled` with `Retry-After` before any password is checked:

- per client address (behind a reverse proxy in `[admin] trusted_proxies`, the
  client it names, see `client_address`): 5 failures within 5 minutes shut that
  address out until the oldest of them is 5 minutes old;
- per username, known or not, from any address: after 5 failures in a row each
  failure locks the username for a while, 1 s after the 5th, doubling with every
  further one up to 5 minutes, until a login succeeds. However many addresses guess
  at one user, they get about 12 guesses an hour once the lock has grown; refused
  attempts cost them nothing and tell them nothing.

So behind a proxy (with its address in `trusted_proxies`), an admin whom nobody
attacks is not shut out by someone else's guessing. An attempt counts as a failure
from the moment its password check begins, so concurrent guesses are held to the
limits as well; a success clears its address's and its username's count.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .. import tokens
from ..errors import GatewayError
from ..middleware import error_middleware
from ..passwords import verify_password
from ..state import CLOCK, SETTINGS, STORE, TRUSTED_PROXIES
from ..store import Actor, StoreUnavailable
from ..times import parse_iso
from .common import ACTOR, json_response, read_json

NO_ADMIN = (
    "No admin user exists yet: create one on the gateway host with `llmgw admin add USERNAME`."
)
# Admin usernames have at most 64 characters: a guess is counted under its first 100,
# so a table full of long guesses stays small.
_USERNAME_CHARS = 100


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
        address_limit: int = 5,
        address_window: float = 300.0,
        username_limit: int = 5,
        first_lock: float = 1.0,
        max_lock: float = 300.0,
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
        username = username[:_USERNAME_CHARS]
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
        self._usernames.pop(username[:_USERNAME_CHARS], None)

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


SECRET = web.AppKey("token_secret", bytes)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)


def create_remote_app(
    secret_key: str, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    from . import add_routes  # the routes both doors share

    remote = web.Application(middlewares=[error_middleware(), _token_middleware()])
    # Without a configured secret, tokens are signed with a random one: they end with
    # the process, which is safe, and the log says how to keep them across restarts.
    remote[SECRET] = secret_key.encode() if secret_key else secrets.token_bytes(32)
    remote[THROTTLE] = LoginThrottle(clock)
    remote.router.add_post("/login", login)
    add_routes(remote)
    return remote


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, frozenset({"username", "password"}))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise GatewayError(400, "'username' and 'password' are required.")
    store = request.config_dict[STORE]
    if await store.count_active_admins() == 0:
        raise _unauthorized(NO_ADMIN, "no_admin_user")
    client = request.config_dict[TRUSTED_PROXIES].client_of(request)
    throttle = request.app[THROTTLE]
    if lockout := throttle.attempt(client, username):
        raise GatewayError(
            429,
            f"Too many failed logins {lockout.reason}; try again later.",
            code="login_throttled",
            headers={"Retry-After": str(max(1, math.ceil(lockout.seconds)))},
        )
    admin = await store.get_admin(username)
    usable = admin is not None and admin.is_active
    if not await verify_password(password, admin.hashed_password if usable and admin else None):
        raise _unauthorized("Wrong username or password.", "invalid_credentials")
    throttle.succeeded(client, username)
    # A login that cannot be recorded (the database is away) still logs in: the
    # password was checked, and the last login is a note, not a guard.
    with contextlib.suppress(StoreUnavailable):
        async with store.transaction() as tx:
            await tx.update_admin(username, logged_in=True)
    ttl = request.config_dict[SETTINGS].admin.token_ttl
    token = tokens.issue(request.app[SECRET], username, request.config_dict[CLOCK].wall(), ttl)
    return json_response({"access_token": token, "token_type": "bearer", "expires_in": int(ttl)})


def _token_middleware() -> Middleware:
    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.resource is None or request.path.endswith("/login"):
            return await handler(request)
        try:
            request[ACTOR] = await _authenticate(request)
        except GatewayError as exc:
            return exc.response()
        return await handler(request)

    return check_token


async def _authenticate(request: web.Request) -> Actor:
    store = request.config_dict[STORE]
    presented = request.headers.getall("Authorization", ())
    if len({value.strip() for value in presented}) > 1:
        # Which token is meant would be a guess; logging in again would not help.
        raise GatewayError(
            400,
            "The request carries more than one Authorization header; send one token.",
            code="ambiguous_token",
        )
    scheme, _, token = (presented[0] if presented else "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        if await store.count_active_admins() == 0:
            raise _unauthorized(NO_ADMIN, "no_admin_user")
        raise _unauthorized(
            "Log in first: POST /admin/api/login, then send 'Authorization: Bearer TOKEN'.",
            "missing_token",
        )
    try:
        claims = tokens.verify(
            request.app[SECRET], token.strip(), request.config_dict[CLOCK].wall()
        )
    except tokens.InvalidToken as exc:
        raise _unauthorized(
            f"The token is not valid: {exc}; log in again.", "invalid_token"
        ) from None
    admin = await store.get_admin(claims.username)
    if admin is None or not admin.is_active:
        raise _unauthorized("This admin user is disabled; log in as another.", "invalid_token")
    if admin.tokens_valid_after and claims.issued_at < parse_iso(admin.tokens_valid_after):
        raise _unauthorized(
            "The password has changed, or the user was disabled, since this token was "
            "issued; log in again.",
            "invalid_token",
        )
    client = request.config_dict[TRUSTED_PROXIES].client_of(request)
    return Actor(f"admin:{admin.username}", f"remote:{client}")


def _unauthorized(message: str, code: str) -> GatewayError:
    return GatewayError(401, message, type_="invalid_request_error", code=code)
