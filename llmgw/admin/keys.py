"""API keys through the admin API: create, list, show, update, revoke, rotate, delete.

Each change is one transaction holding the change and its audit row; the in-memory key
table follows on commit, so the very next request sees it, and two concurrent changes
land in the database and in memory in the same order.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from ..api_types import (
    BUDGET_PERIODS,
    KEY_LIMITS,
    BudgetPeriod,
    CreatedKey,
    DeletedKey,
    KeyDetail,
    LimitsView,
)
from ..errors import GatewayError
from ..keys import ApiKey, display_prefix, generate_key, hash_key, parse_expiry
from ..limits import LimiterUnavailable, limits_for
from ..state import CLOCK, KEYS, LIMITER, SETTINGS, STORE
from ..store import Store, Transaction
from .common import actor, budget_period, change, field, json_response, read_json

routes = web.RouteTableDef()

# A key's own token, in-flight and budget limits: 0 is unlimited for this key, null
# its tier's.
_OVERRIDES = ("tokens_per_minute", "tokens_per_day", "max_in_flight", "budget_tokens")
_CHANGEABLE = frozenset({"tier", "description", "expires_at", "allowed_models", *KEY_LIMITS})
_CREATE_FIELDS = _CHANGEABLE | {"user_id"}
_UPDATE_FIELDS = _CHANGEABLE | {"is_active"}


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    query = request.query
    active = query.get("active")
    if active not in (None, "true", "false"):
        raise GatewayError(400, "'active' must be true or false.", param="active")
    keys = await request.config_dict[STORE].load_keys(
        user_id=query.get("user_id"),
        tier=query.get("tier"),
        active=None if active is None else active == "true",
    )
    return json_response({"data": [k.public() for k in keys]})


@routes.get("/keys/{key_id}")
async def get_key(request: web.Request) -> web.Response:
    key = await _existing(request.config_dict[STORE], request)
    return json_response(KeyDetail(**key.public(), limits=await _limits(request, key)))


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, _CREATE_FIELDS)
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id.strip():
        raise GatewayError(400, "'user_id' is required: who the key is for.", param="user_id")
    changes = _key_fields(request, body)
    changes.setdefault("tier", request.config_dict[SETTINGS].admin.default_tier)
    plaintext = generate_key()
    store = request.config_dict[STORE]
    async with change(store) as tx:
        key = await tx.insert_key(
            key_hash=hash_key(plaintext),
            key_prefix=display_prefix(plaintext),
            user_id=user_id.strip(),
            tier=changes.pop("tier"),
            description=changes.pop("description", ""),
            **changes,
        )
        await tx.record_audit(actor(request), "key.create", f"key:{key.id}", None, key.public())
        _follow(request, tx, key)
    return json_response(CreatedKey(key=plaintext, **key.public()), status=201)


@routes.put("/keys/{key_id}")
async def update_key(request: web.Request) -> web.Response:
    body = await read_json(request, _UPDATE_FIELDS)
    changes = _key_fields(request, body)
    if "is_active" in body:
        changes["is_active"] = field(body, "is_active", _boolean, "true or false")
    if not changes:
        raise GatewayError(400, f"Nothing to change; fields: {', '.join(sorted(_UPDATE_FIELDS))}.")
    return json_response((await _change(request, "key.update", changes)).public())


@routes.post("/keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    return json_response((await _change(request, "key.revoke", {"is_active": False})).public())


@routes.post("/keys/{key_id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    plaintext = generate_key()
    changes = {"key_hash": hash_key(plaintext), "key_prefix": display_prefix(plaintext)}
    key = await _change(request, "key.rotate", changes)
    return json_response(CreatedKey(key=plaintext, **key.public()))


@routes.delete("/keys/{key_id}")
async def delete_key(request: web.Request) -> web.Response:
    store = request.config_dict[STORE]
    async with change(store) as tx:
        key = await _existing(tx, request)
        await tx.delete_key(key.id)
        await tx.record_audit(actor(request), "key.delete", f"key:{key.id}", key.public(), None)
        keys = request.config_dict[KEYS]
        tx.on_commit(lambda: keys.remove(key.id))
    # No request can name the key any more: what its limits held can go.
    await request.config_dict[LIMITER].forget(key.id)
    return json_response(DeletedKey(deleted=True, **key.public()))


async def _change(request: web.Request, action: str, changes: dict[str, Any]) -> ApiKey:
    store = request.config_dict[STORE]
    async with change(store) as tx:
        before = await _existing(tx, request)
        after = await tx.update_key(before.id, changes)
        assert after is not None  # the row exists: we hold the write lock
        await tx.record_audit(
            actor(request), action, f"key:{after.id}", before.public(), after.public()
        )
        _follow(request, tx, after)
    return after


async def _limits(request: web.Request, key: ApiKey) -> LimitsView | None:
    """Each limit of the key now, and what is left of it; None when the limiter cannot
    say (Redis gone, and the policy is to refuse)."""
    limiter, settings = request.config_dict[LIMITER], request.config_dict[SETTINGS]
    try:
        decision = await limiter.windows(key.id, limits_for(key, settings))
    except LimiterUnavailable:
        return None
    return decision.view()


def _follow(request: web.Request, tx: Transaction, key: ApiKey) -> None:
    keys = request.config_dict[KEYS]
    tx.on_commit(lambda: keys.put(key))


async def _existing(source: Store | Transaction, request: web.Request) -> ApiKey:
    raw = request.match_info["key_id"]
    key = await source.get_key(int(raw)) if raw.isdigit() else None
    if key is None:
        raise GatewayError(404, f"No API key with id {raw}.", code="key_not_found")
    return key


def _key_fields(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a create or update, checked and in the store's types."""
    settings = request.config_dict[SETTINGS]
    now = request.config_dict[CLOCK].wall()
    out: dict[str, Any] = {}
    if "tier" in body:
        tiers = settings.tiers

        def known_tier(value: Any) -> str:
            if value not in tiers:
                raise ValueError(f"no tier named {value!r}; tiers: {', '.join(tiers)}")
            return str(value)

        out["tier"] = field(body, "tier", known_tier, "a tier name")
    if "description" in body:
        out["description"] = field(body, "description", _string, "a string")
    if "expires_at" in body:
        out["expires_at"] = field(
            body, "expires_at", functools.partial(_expiry, now=now), "a future date, or null"
        )
    if "allowed_models" in body:
        out["allowed_models"] = field(
            body, "allowed_models", _models, "a list of model names, or null for all"
        )
    for name in ("requests_per_minute", "requests_per_hour"):
        if name in body:
            out[name] = field(body, name, _limit, "a whole number of at least 1, or null")
    for name in _OVERRIDES:
        if name in body:
            out[name] = field(
                body, name, _override, "a whole number, 0 or more (0: unlimited), or null"
            )
    if "budget_period" in body:
        out["budget_period"] = field(
            body, "budget_period", _period_or_none, f"one of {', '.join(BUDGET_PERIODS)}, or null"
        )
    return out


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _expiry(value: Any, now: float) -> float | None:
    if value is None:
        return None
    expires = parse_expiry(_string(value), now)
    if expires <= now:
        raise ValueError(f"{value!r} is in the past")
    return expires


def _models(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise TypeError
    if not all(isinstance(m, str) and m.strip() for m in value):
        raise TypeError
    return tuple(dict.fromkeys(m.strip() for m in value))


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError
    return value


def _override(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError
    return value


def _period_or_none(value: Any) -> BudgetPeriod | None:
    return None if value is None else budget_period(value)
