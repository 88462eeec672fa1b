"""The remote door: the admin API under `/admin/api` on the public port, behind login.

`POST /admin/api/login` trades an admin user's password for a bearer token (a signed
JWT that expires); every other route needs one. A token is refused once it expires,
once its user is disabled, and once the user's password has changed. Failed logins are
counted per client address: past a few, that client is refused for a while.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .. import tokens
from ..errors import GatewayError
from ..middleware import error_middleware
from ..passwords import verify_password
from ..state import SETTINGS, STORE
from ..store import Actor
from ..times import parse_iso
from .common import ACTOR, json_response, read_json

NO_ADMIN = (
    "No admin user exists yet: create one on the gateway host with `llmgw admin add USERNAME`."
)


class LoginThrottle:
    """Failed logins per client: `limit` within `window` seconds shut that client out
    until the oldest of them is `window` seconds old."""

    def __init__(self, limit: int = 5, window: float = 300.0, clients: int = 10_000) -> None:
        self._limit = limit
        self._window = window
        self._clients = clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float) -> float:
        failures = self._failures.get(client)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if len(failures) < self._limit:
            return 0.0
        return failures[0] + self._window - now

    def failed(self, client: str, now: float) -> None:
        self._failures.setdefault(client, deque(maxlen=self._limit)).append(now)
        self._failures.move_to_end(client)
        while len(self._failures) > self._clients:  # bounded, whoever is asking
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


SECRET = web.AppKey("token_secret", bytes)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)


def create_remote_app(secret_key: str) -> web.Application:
    from . import add_routes  # the routes both doors share

    remote = web.Application(middlewares=[error_middleware(), _token_middleware()])
    # Without a configured secret, tokens are signed with a random one: they end with
    # the process, which is safe, and the log says how to keep them across restarts.
    remote[SECRET] = secret_key.encode() if secret_key else secrets.token_bytes(32)
    remote[THROTTLE] = LoginThrottle()
    remote.router.add_post("/login", login)
    add_routes(remote)
    return remote


async def login(request: web.Request) -> web.Response:
    client = request.remote or "unknown"
    throttle = request.app[THROTTLE]
    now = time.time()
    if wait := throttle.retry_after(client, now):
        raise GatewayError(
            429,
            "Too many failed logins from this address; try again later.",
            code="login_throttled",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    body = await read_json(request, frozenset({"username", "password"}))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise GatewayError(400, "'username' and 'password' are required.")
    store = request.config_dict[STORE]
    if await store.count_active_admins() == 0:
        raise _unauthorized(NO_ADMIN, "no_admin_user")
    admin = await store.get_admin(username)
    usable = admin is not None and admin.is_active
    if not await verify_password(password, admin.hashed_password if usable and admin else None):
        throttle.failed(client, now)
        raise _unauthorized("Wrong username or password.", "invalid_credentials")
    throttle.succeeded(client)
    async with store.transaction():
        await store.update_admin(username, logged_in=True)
    ttl = request.config_dict[SETTINGS].admin.token_ttl
    token = tokens.issue(request.app[SECRET], username, now, ttl)
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
        claims = tokens.verify(request.app[SECRET], token.strip(), time.time())
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
    return Actor(f"admin:{admin.username}", f"remote:{request.remote or 'unknown'}")


def _unauthorized(message: str, code: str) -> GatewayError:
    return GatewayError(401, message, type_="invalid_request_error", code=code)
