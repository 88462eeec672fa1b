"""The admin API: one set of handlers behind both doors (the Unix socket, and later
`/admin/api` on the public port).

Every change goes to the database first, then to the in-memory key table, so the next
request sees it; and every change leaves an audit row with who made it, from which
door, and the key's state before and after (never a secret).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .admin_socket import PEER
from .errors import GatewayError
from .health import health
from .keys import ApiKey, display_prefix, generate_key, hash_key, parse_expiry
from .state import KEYS, LIMITER, SETTINGS, STORE

routes = web.RouteTableDef()

_CREATE_FIELDS = frozenset({"user_id", "tier", "description", "expires_at", "allowed_models"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    return body


def _actor(request: web.Request) -> tuple[str, str]:
    """Who is asking, and through which door."""
    peer = request.get(PEER)
    return (peer.name, "socket") if peer is not None else ("unknown", "unknown")


async def _audit(
    request: web.Request,
    action: str,
    key_id: int,
    before: ApiKey | None,
    after: ApiKey | None,
) -> None:
    actor, door = _actor(request)
    await request.config_dict[STORE].record_audit(
        actor=actor,
        door=door,
        action=action,
        target=f"key:{key_id}",
        before=before.public() if before else None,
        after=after.public() if after else None,
    )


def _key_id(request: web.Request) -> int:
    try:
        return int(request.match_info["key_id"])
    except ValueError:
        raise GatewayError(404, f"No API key with id {request.match_info['key_id']!r}.") from None


async def _existing_key(request: web.Request) -> ApiKey:
    key_id = _key_id(request)
    key = await request.config_dict[STORE].get_key(key_id)
    if key is None:
        raise GatewayError(404, f"No API key with id {key_id}.", code="key_not_found")
    return key


routes.get("/health")(health)


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    keys = await request.config_dict[STORE].load_keys()
    return _json({"data": [k.public() for k in sorted(keys, key=lambda k: k.id)]})


@routes.get("/keys/{key_id}")
async def get_key(request: web.Request) -> web.Response:
    return _json((await _existing_key(request)).public())


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    cfg = request.config_dict
    body = await _body(request)
    if unknown := sorted(set(body) - _CREATE_FIELDS):
        raise GatewayError(400, f"Unknown field(s): {', '.join(unknown)}.", param=unknown[0])
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id.strip():
        raise GatewayError(400, "'user_id' is required: who the key is for.", param="user_id")
    settings = cfg[SETTINGS]
    tier = body.get("tier") or settings.admin.default_tier
    if tier not in settings.tiers:
        raise GatewayError(
            400, f"No tier named {tier!r}; tiers: {', '.join(settings.tiers)}.", param="tier"
        )
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise GatewayError(400, "'description' must be a string.", param="description")
    plaintext = generate_key()
    key = await cfg[STORE].insert_key(
        key_hash=hash_key(plaintext),
        key_prefix=display_prefix(plaintext),
        user_id=user_id.strip(),
        tier=tier,
        description=description,
        expires_at=_expiry(body.get("expires_at")),
        allowed_models=_models(body.get("allowed_models")),
    )
    cfg[KEYS].put(key)
    await _audit(request, "key.create", key.id, None, key)
    return _json({"key": plaintext, **key.public()}, status=201)


def _expiry(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise GatewayError(
            400, "'expires_at' must be a date or datetime string.", param="expires_at"
        )
    now = time.time()
    try:
        expires = parse_expiry(value, now)
    except ValueError as exc:
        raise GatewayError(400, str(exc), param="expires_at") from None
    if expires <= now:
        raise GatewayError(400, f"'expires_at' {value!r} is in the past.", param="expires_at")
    return expires


def _models(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise GatewayError(
            400,
            "'allowed_models' must be a list of model names, or null for all.",
            param="allowed_models",
        )
    return tuple(dict.fromkeys(value))


@routes.post("/keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    cfg = request.config_dict
    before = await _existing_key(request)
    after = await cfg[STORE].set_key_active(before.id, False)
    if after is None:  # deleted between the two statements
        raise GatewayError(404, f"No API key with id {before.id}.", code="key_not_found")
    cfg[KEYS].put(after)
    cfg[LIMITER].forget(after.id)
    await _audit(request, "key.revoke", after.id, before, after)
    return _json(after.public())
