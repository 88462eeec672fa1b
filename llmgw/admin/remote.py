"""The remote door: the admin API under `/admin/api` on the public port, behind login.

`POST /admin/api/login` trades an admin user's password for a bearer token (a signed
JWT that expires); every other route needs one. A token is refused once it expires,
once its user is disabled, and once the user's password has changed.

Failed logins are throttled two ways (`limits.login`: in this process, or in Redis with
[limits] backend = "redis", so that replicas count them together), each answered 429
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

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .. import tokens
from ..errors import GatewayError
from ..limits.login import Lockout, LoginThrottle, Throttle
from ..middleware import error_middleware
from ..passwords import verify_password
from ..state import CLOCK, SETTINGS, STORE, TRUSTED_PROXIES
from ..store import Actor, StoreUnavailable
from ..times import parse_iso
from .common import ACTOR, json_response, read_json

NO_ADMIN = (
    "No admin user exists yet: create one on the gateway host with `llmgw admin add USERNAME`."
)
__all__ = ["Lockout", "LoginThrottle", "create_remote_app"]  # the throttle's: re-exported

SECRET = web.AppKey("token_secret", bytes)
THROTTLE = web.AppKey("login_throttle", Throttle)


def create_remote_app(secret_key: str, throttle: Throttle) -> web.Application:
    """`throttle`: the failed logins' counts (`limits.login.open_throttle`), closed with
    the app."""
    from . import add_routes  # the routes both doors share

    remote = web.Application(middlewares=[error_middleware(), _token_middleware()])
    # Without a configured secret, tokens are signed with a random one: they end with
    # the process, which is safe, and the log says how to keep them across restarts.
    remote[SECRET] = secret_key.encode() if secret_key else secrets.token_bytes(32)
    remote[THROTTLE] = throttle
    remote.on_cleanup.append(_close_throttle)
    remote.router.add_post("/login", login)
    add_routes(remote)
    return remote


async def _close_throttle(remote: web.Application) -> None:
    await remote[THROTTLE].close()


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
    if lockout := await throttle.refuse(client, username):
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
    await throttle.clear(client, username)
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
