"""Admin users of the remote admin API: add, list, change password, disable.

Passwords are argon2 hashes (never returned, never audited). Changing a password or
disabling a user ends the user's existing tokens: the remote door checks both on
every request.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..errors import GatewayError
from ..passwords import check_strength, hash_password
from ..state import STORE
from ..store import AdminUser, AlreadyExists, Transaction
from .common import actor, change, field, json_response, read_json

routes = web.RouteTableDef()

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@routes.get("/admins")
async def list_admins(request: web.Request) -> web.Response:
    admins = await request.config_dict[STORE].list_admins()
    return json_response({"data": [a.public() for a in admins]})


@routes.post("/admins")
async def add_admin(request: web.Request) -> web.Response:
    body = await read_json(request, frozenset({"username", "password", "email"}))
    username = field(body, "username", _username, "1-64 letters, digits or _ . @ -")
    hashed = await hash_password(_password(body))
    email = body.get("email")
    if email is not None and not isinstance(email, str):
        raise GatewayError(400, "'email' must be a string.", param="email")
    store = request.config_dict[STORE]
    try:
        async with change(store) as tx:
            admin = await tx.insert_admin(username, hashed, email)
            await tx.record_audit(
                actor(request), "admin.create", f"admin:{username}", None, admin.public()
            )
    except AlreadyExists:
        raise GatewayError(
            409, f"An admin user named {username!r} exists already.", code="admin_exists"
        ) from None
    return json_response(admin.public(), status=201)


@routes.put("/admins/{username}")
async def update_admin(request: web.Request) -> web.Response:
    body = await read_json(request, frozenset({"password", "is_active"}))
    active = body.get("is_active")
    if active is not None and not isinstance(active, bool):
        raise GatewayError(400, "'is_active' must be true or false.", param="is_active")
    if active is None and "password" not in body:
        raise GatewayError(400, "Nothing to change; fields: is_active, password.")
    hashed = await hash_password(_password(body)) if "password" in body else None
    username = request.match_info["username"]
    store = request.config_dict[STORE]
    async with change(store) as tx:
        before = await _existing(tx, username)
        after = await tx.update_admin(username, hashed_password=hashed, is_active=active)
        assert after is not None  # the row exists: we hold the write lock
        action = "admin.password" if hashed else "admin.enable" if active else "admin.disable"
        await tx.record_audit(
            actor(request), action, f"admin:{username}", before.public(), after.public()
        )
    return json_response(after.public())


async def _existing(tx: Transaction, username: str) -> AdminUser:
    admin = await tx.get_admin(username)
    if admin is None:
        raise GatewayError(404, f"No admin user named {username!r}.", code="admin_not_found")
    return admin


def _username(value: Any) -> str:
    if not isinstance(value, str) or not _USERNAME.match(value):
        raise TypeError
    return value


def _password(body: dict[str, Any]) -> str:
    password = body.get("password")
    if not isinstance(password, str):
        raise GatewayError(400, "'password' is required.", param="password")
    if problem := check_strength(password):
        raise GatewayError(400, f"'password' is too weak: {problem}.", param="password")
    return password
