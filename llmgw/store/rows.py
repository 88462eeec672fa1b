"""What both databases share: the column lists of the tables (the schema is the same on
SQLite and PostgreSQL) and the conversions from their rows to the store's types, for
reads and changes alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..api_types import KEY_LIMITS, AuditEntry, RequestRow, UserBudget
from ..keys import ApiKey
from ..rollups import Grouping
from ..times import iso_utc, parse_iso
from .base import AdminUser, KeyChanges

# What an update of a key may change, and how each value is stored (a bool binds as 1/0
# on SQLite and as a boolean on PostgreSQL).
_KEY_STORED: Mapping[str, Callable[[Any], Any]] = {
    "tier": str,
    "description": str,
    "is_active": bool,
    "expires_at": lambda v: None if v is None else iso_utc(v),
    "allowed_models": lambda v: None if v is None else orjson.dumps(v).decode(),
    "requests_per_minute": lambda v: v,
    "requests_per_hour": lambda v: v,
    "tokens_per_minute": lambda v: v,
    "tokens_per_day": lambda v: v,
    "max_in_flight": lambda v: v,
    "budget_tokens": lambda v: v,
    "budget_period": lambda v: v,
    "key_hash": str,
    "key_prefix": str,
}


def stored(name: str, value: Any) -> Any:
    """A key's field as its column holds it."""
    return _KEY_STORED[name](value)


def key_update(changes: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The columns an update of a key sets, in order, with the values to store
    (`updated_at` last); a ValueError names a field no update may change."""
    if unknown := sorted(set(changes) - set(_KEY_STORED)):
        raise ValueError(f"not updatable: {unknown}")
    return {name: stored(name, value) for name, value in changes.items()} | {
        "updated_at": iso_utc(now)
    }


def admin_update(
    now: float, *, hashed_password: str | None, is_active: bool | None, logged_in: bool
) -> dict[str, Any]:
    """The columns an update of an admin user sets, with their values (none: nothing)."""
    at = iso_utc(now)
    columns: dict[str, Any] = {}
    if hashed_password is not None:
        columns |= {"hashed_password": hashed_password, "password_changed_at": at}
    if is_active is not None:
        columns["is_active"] = is_active
    if hashed_password is not None or is_active is False:
        # Every token issued so far dies, and stays dead if the user is enabled again.
        columns["tokens_valid_after"] = at
    if logged_in:
        columns["last_login"] = at
    return columns


_KEY_OWN = (
    "id", "key_hash", "key_prefix", "user_id", "tier", "description", "is_active",
    "created_at", "updated_at", "expires_at", "last_used_at", "allowed_models", *KEY_LIMITS,
)  # fmt: skip
# api_keys' own columns: what a change of a key RETURNs (`key_from_row` wants the
# user's budget after them: `with_user_budget`).
KEY_COLUMNS = ", ".join(_KEY_OWN)
# A key's row with its user's budget (NULLs: none), for every read of keys: the budget
# travels with the keys, to the request path and (through the key change log) to every
# replica. `{where}` is empty or a WHERE clause on `api_keys.`'s columns.
SELECT_KEYS = (
    f"SELECT {', '.join(f'api_keys.{c}' for c in _KEY_OWN)},"
    " user_budgets.budget_tokens, user_budgets.budget_period FROM api_keys"
    " LEFT JOIN user_budgets ON user_budgets.user_id = api_keys.user_id"
)
USER_BUDGET_COLUMNS = "user_id, budget_tokens, budget_period"
ADMIN_COLUMNS = (
    "id, username, hashed_password, email, is_active, created_at, last_login, password_changed_at,"
    " tokens_valid_after"
)
REQUEST_COLUMNS = (
    "id, request_id, timestamp, user_id, api_key_id, endpoint, model, status_code,"
    " prompt_tokens, completion_tokens, usage_source, duration_ms, ttft_ms, upstream"
)
AUDIT_COLUMNS = "id, timestamp, actor, door, action, target, before, after"
# What each grouping of `GET /usage` groups by, as a column of both rollup tables.
USAGE_GROUP_BY: Mapping[Grouping, str] = {
    "user": "user_id",
    "key": "api_key_id",
    "model": "model",
    "endpoint": "endpoint",
    "day": "substr(hour, 1, 10)",
}
# Each key changed after a version ({after}: the placeholder), once, with its newest
# change and its row now (NULLs once deleted: ids are never reused).
KEY_CHANGES_SINCE = (
    f"SELECT changed.version, changed.key_id, {', '.join(f'api_keys.{c}' for c in _KEY_OWN)},"
    " user_budgets.budget_tokens, user_budgets.budget_period FROM"
    " (SELECT key_id, max(version) AS version FROM key_changes WHERE version > {after}"
    " GROUP BY key_id) AS changed LEFT JOIN api_keys ON api_keys.id = changed.key_id"
    " LEFT JOIN user_budgets ON user_budgets.user_id = api_keys.user_id"
)


def tokens_since_where(
    since: float, key_id: int | None, user_id: str | None
) -> tuple[str, int | str, str, str, str]:
    """What `Store.tokens_since` sums: the column and value of the key or user, and
    `since` as the ledger's text, its hour (rollup cells after it are whole) and the
    start of the next hour (the rows before it and at or after `since` are the rest)."""
    if (key_id is None) == (user_id is None):
        raise ValueError("tokens_since: give key_id or user_id, not both")
    column, value = ("api_key_id", key_id) if key_id is not None else ("user_id", user_id)
    assert value is not None
    at = iso_utc(since)  # rounded as the ledger rounds its rows' timestamps
    hour = at[:13]
    next_hour = iso_utc(parse_iso(f"{hour}:00:00+00:00") + 3600)
    return column, value, at, hour, next_hour


def key_changes(since: int, rows: Iterable[Iterable[Any]]) -> KeyChanges:
    """`KEY_CHANGES_SINCE`'s rows as `KeyChanges`."""
    version = since
    keys: dict[int, ApiKey | None] = {}
    for changed, key_id, *columns in rows:
        version = max(version, changed)
        keys[key_id] = None if columns[0] is None else key_from_row(columns)
    return KeyChanges(version, keys)


def key_from_row(row: Iterable[Any]) -> ApiKey:
    """A row of `SELECT_KEYS` (api_keys' columns, then the user's budget) as a key."""
    (
        key_id,
        key_hash,
        key_prefix,
        user_id,
        tier,
        description,
        is_active,
        created_at,
        updated_at,
        expires_at,
        last_used_at,
        allowed_models,
        *limits,
        user_budget_tokens,
        user_budget_period,
    ) = row
    return ApiKey(
        id=key_id,
        key_hash=key_hash,
        key_prefix=key_prefix,
        user_id=user_id,
        tier=tier,
        description=description,
        is_active=bool(is_active),
        created_at=parse_iso(created_at),
        updated_at=parse_iso(updated_at),
        expires_at=parse_iso(expires_at) if expires_at else None,
        last_used_at=parse_iso(last_used_at) if last_used_at else None,
        allowed_models=tuple(orjson.loads(allowed_models)) if allowed_models else None,
        **dict(zip(KEY_LIMITS, limits, strict=True)),
        user_budget_tokens=user_budget_tokens,
        user_budget_period=user_budget_period,
    )


def with_user_budget(row: Iterable[Any], budget: Iterable[Any] | None) -> ApiKey:
    """A key from api_keys' own columns (`KEY_COLUMNS`, as a change RETURNs them) and
    its user's (budget_tokens, budget_period), or None for no budget."""
    return key_from_row((*row, *(budget or (None, None))))


def user_budget(row: Iterable[Any]) -> UserBudget:
    user_id, tokens, period = row
    return UserBudget(user_id=user_id, budget_tokens=tokens, budget_period=period)


def admin_from_row(row: Iterable[Any]) -> AdminUser:
    admin_id, username, hashed, email, active, created, last_login, changed, valid_after = row
    return AdminUser(
        admin_id, username, hashed, email, bool(active), created, last_login, changed, valid_after
    )


def request_row(row: Iterable[Any]) -> RequestRow:
    (
        row_id, request_id, timestamp, user_id, api_key_id, endpoint, model, status_code,
        prompt_tokens, completion_tokens, usage_source, duration_ms, ttft_ms, upstream,
    ) = row  # fmt: skip
    return RequestRow(
        id=row_id,
        request_id=request_id,
        timestamp=timestamp,
        user_id=user_id,
        api_key_id=api_key_id,
        endpoint=endpoint,
        model=model,
        status_code=status_code,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        usage_source=usage_source,
        duration_ms=duration_ms,
        ttft_ms=ttft_ms,
        upstream=upstream,
    )


def audit_entry(row: Iterable[Any]) -> AuditEntry:
    entry_id, timestamp, actor, door, action, target, before, after = row
    return AuditEntry(
        id=entry_id,
        timestamp=timestamp,
        actor=actor,
        door=door,
        action=action,
        target=target,
        before=orjson.loads(before) if before else None,
        after=orjson.loads(after) if after else None,
    )
