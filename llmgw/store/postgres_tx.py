"""A change in the PostgreSQL store: the statements of one transaction on one pooled
connection (`PostgresStore.transaction` begins and ends it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

from ..keys import ApiKey
from ..times import iso_utc
from .base import Actor, AdminUser, AlreadyExists
from .postgres_pool import Connection
from .rows import ADMIN_COLUMNS, KEY_COLUMNS, admin_from_row, key_from_row

# What an update may change, and how each value is stored.
KEY_UPDATABLE: Mapping[str, Callable[[Any], Any]] = {
    "tier": str,
    "description": str,
    "is_active": bool,
    "expires_at": lambda v: None if v is None else iso_utc(v),
    "allowed_models": lambda v: None if v is None else orjson.dumps(v).decode(),
    "requests_per_minute": lambda v: v,
    "requests_per_hour": lambda v: v,
    "key_hash": str,
    "key_prefix": str,
}


class PostgresTransaction:
    def __init__(self, connection: Connection, clock: Callable[[], float]) -> None:
        self._db = connection
        self._clock = clock
        self.after_commit: list[Callable[[], None]] = []

    def on_commit(self, action: Callable[[], None]) -> None:
        self.after_commit.append(action)

    # --- keys -----------------------------------------------------------------------

    async def get_key(self, key_id: int) -> ApiKey | None:
        return await self._key(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)

    async def insert_key(
        self,
        *,
        key_hash: str,
        key_prefix: str,
        user_id: str,
        tier: str,
        description: str,
        expires_at: float | None = None,
        allowed_models: tuple[str, ...] | None = None,
        requests_per_minute: int | None = None,
        requests_per_hour: int | None = None,
    ) -> ApiKey:
        now = iso_utc(self._clock())
        try:
            key = await self._key(
                "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, description,"
                " is_active, created_at, updated_at, expires_at, allowed_models,"
                " requests_per_minute, requests_per_hour)"
                " VALUES ($1, $2, $3, $4, $5, TRUE, $6, $6, $7, $8, $9, $10)"
                f" RETURNING {KEY_COLUMNS}",
                key_hash,
                key_prefix,
                user_id,
                tier,
                description,
                now,
                KEY_UPDATABLE["expires_at"](expires_at),
                KEY_UPDATABLE["allowed_models"](allowed_models),
                requests_per_minute,
                requests_per_hour,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a key with that hash exists already") from None
        assert key is not None  # RETURNING always yields the inserted row
        return key

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> ApiKey | None:
        columns = [name for name in changes if name in KEY_UPDATABLE]
        if len(columns) != len(changes):
            raise ValueError(f"not updatable: {sorted(set(changes) - set(columns))}")
        names = [*columns, "updated_at"]
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, 1))
        params = [KEY_UPDATABLE[name](changes[name]) for name in columns]
        return await self._key(
            f"UPDATE api_keys SET {assignments} WHERE id = ${len(names) + 1}"
            f" RETURNING {KEY_COLUMNS}",
            *params,
            iso_utc(self._clock()),
            key_id,
        )

    async def delete_key(self, key_id: int) -> ApiKey | None:
        return await self._key(
            f"DELETE FROM api_keys WHERE id = $1 RETURNING {KEY_COLUMNS}", key_id
        )

    # --- admin users ----------------------------------------------------------------

    async def get_admin(self, username: str) -> AdminUser | None:
        return await self._admin(
            f"SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = $1", username
        )

    async def insert_admin(
        self, username: str, hashed_password: str, email: str | None
    ) -> AdminUser:
        now = iso_utc(self._clock())
        try:
            admin = await self._admin(
                "INSERT INTO admin_users (username, hashed_password, email, is_active,"
                " created_at, password_changed_at) VALUES ($1, $2, $3, TRUE, $4, $4)"
                f" RETURNING {ADMIN_COLUMNS}",
                username,
                hashed_password,
                email,
                now,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"an admin user named {username!r} exists already") from None
        assert admin is not None
        return admin

    async def update_admin(
        self,
        username: str,
        *,
        hashed_password: str | None = None,
        is_active: bool | None = None,
        logged_in: bool = False,
    ) -> AdminUser | None:
        now = iso_utc(self._clock())
        changes: dict[str, Any] = {}
        if hashed_password is not None:
            changes |= {"hashed_password": hashed_password, "password_changed_at": now}
        if is_active is not None:
            changes["is_active"] = is_active
        if hashed_password is not None or is_active is False:
            # Every token issued so far dies, and stays dead if the user is enabled again.
            changes["tokens_valid_after"] = now
        if logged_in:
            changes["last_login"] = now
        if not changes:
            return await self.get_admin(username)
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, 1))
        return await self._admin(
            f"UPDATE admin_users SET {assignments} WHERE username = ${len(changes) + 1}"
            f" RETURNING {ADMIN_COLUMNS}",
            *changes.values(),
            username,
        )

    # --- audit ----------------------------------------------------------------------

    async def record_audit(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO audit_log (timestamp, actor, door, action, target, before, after)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            iso_utc(self._clock()),
            actor.name,
            actor.door,
            action,
            target,
            None if before is None else orjson.dumps(before).decode(),
            None if after is None else orjson.dumps(after).decode(),
        )

    async def _key(self, query: str, *params: Any) -> ApiKey | None:
        row = await self._db.fetchrow(query, *params)
        return key_from_row(row) if row else None

    async def _admin(self, query: str, *params: Any) -> AdminUser | None:
        row = await self._db.fetchrow(query, *params)
        return admin_from_row(row) if row else None
