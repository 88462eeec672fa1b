"""A change in the SQLite store: the statements of one transaction on the writing
connection (`SqliteStore.transaction` begins and ends it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import aiosqlite
import orjson

from ..api_types import KEY_LIMITS, BudgetPeriod, UserBudget
from ..keys import ApiKey
from ..times import iso_utc
from .base import Actor, AdminUser, AlreadyExists, KeyChanges, UserBudgetChange
from .rows import (
    ADMIN_COLUMNS,
    KEY_CHANGES_SINCE,
    KEY_COLUMNS,
    SELECT_KEYS,
    USER_BUDGET_COLUMNS,
    admin_from_row,
    admin_update,
    key_changes,
    key_from_row,
    key_update,
    stored,
    user_budget,
    with_user_budget,
)


class SqliteTransaction:
    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        self.after_commit: list[Callable[[], None]] = []

    def on_commit(self, action: Callable[[], None]) -> None:
        self.after_commit.append(action)

    # --- keys -----------------------------------------------------------------------

    async def get_key(self, key_id: int) -> ApiKey | None:
        async with self._db.execute(f"{SELECT_KEYS} WHERE api_keys.id = ?", (key_id,)) as cursor:
            row = await cursor.fetchone()
        return key_from_row(row) if row else None

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
        tokens_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        max_in_flight: int | None = None,
        budget_tokens: int | None = None,
        budget_period: BudgetPeriod | None = None,
    ) -> ApiKey:
        now = iso_utc(self._clock())
        try:
            key = await self._key(
                "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, description,"
                f" is_active, created_at, updated_at, expires_at, allowed_models,"
                f" {', '.join(KEY_LIMITS)})"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {KEY_COLUMNS}",
                (
                    key_hash,
                    key_prefix,
                    user_id,
                    tier,
                    description,
                    now,
                    now,
                    stored("expires_at", expires_at),
                    stored("allowed_models", allowed_models),
                    requests_per_minute,
                    requests_per_hour,
                    tokens_per_minute,
                    tokens_per_day,
                    max_in_flight,
                    budget_tokens,
                    budget_period,
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists("a key with that hash exists already") from None
        assert key is not None  # RETURNING always yields the inserted row
        await self._changed(key)
        return key

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> ApiKey | None:
        columns = key_update(changes, self._clock())
        assignments = ", ".join(f"{name} = ?" for name in columns)
        return await self._changed(
            await self._key(
                f"UPDATE api_keys SET {assignments} WHERE id = ? RETURNING {KEY_COLUMNS}",
                (*columns.values(), key_id),
            )
        )

    async def delete_key(self, key_id: int) -> ApiKey | None:
        return await self._changed(
            await self._key(f"DELETE FROM api_keys WHERE id = ? RETURNING {KEY_COLUMNS}", (key_id,))
        )

    async def key_changes_since(self, version: int) -> KeyChanges:
        async with self._db.execute(KEY_CHANGES_SINCE.format(after="?"), (version,)) as cursor:
            return key_changes(version, await cursor.fetchall())

    async def _changed(self, key: ApiKey | None) -> ApiKey | None:
        """`key` (changed, unless None) entered in the key change log."""
        if key is not None:
            await self._db.execute(
                "INSERT INTO key_changes (key_id, changed_at) VALUES (?, ?)",
                (key.id, iso_utc(self._clock())),
            )
        return key

    # --- user budgets ---------------------------------------------------------------

    async def set_user_budget(
        self, user_id: str, budget_tokens: int, budget_period: BudgetPeriod
    ) -> UserBudgetChange:
        before = await self._user_budget(user_id)
        await self._db.execute(
            "INSERT INTO user_budgets (user_id, budget_tokens, budget_period, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " budget_tokens = excluded.budget_tokens, budget_period = excluded.budget_period,"
            " updated_at = excluded.updated_at",
            (user_id, budget_tokens, budget_period, iso_utc(self._clock())),
        )
        return UserBudgetChange(
            before, await self._user_budget(user_id), await self._user_keys_changed(user_id)
        )

    async def clear_user_budget(self, user_id: str) -> UserBudgetChange:
        before = await self._user_budget(user_id)
        if before is None:
            return UserBudgetChange(None, None, ())
        await self._db.execute("DELETE FROM user_budgets WHERE user_id = ?", (user_id,))
        return UserBudgetChange(before, None, await self._user_keys_changed(user_id))

    async def _user_budget(self, user_id: str) -> UserBudget | None:
        async with self._db.execute(
            f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets WHERE user_id = ?", (user_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return user_budget(row) if row else None

    async def _user_keys_changed(self, user_id: str) -> tuple[ApiKey, ...]:
        """Every key of the user entered in the key change log: they carry its budget."""
        await self._db.execute(
            "INSERT INTO key_changes (key_id, changed_at)"
            " SELECT id, ? FROM api_keys WHERE user_id = ? ORDER BY id",
            (iso_utc(self._clock()), user_id),
        )
        async with self._db.execute(
            f"{SELECT_KEYS} WHERE api_keys.user_id = ? ORDER BY api_keys.id", (user_id,)
        ) as cursor:
            return tuple(key_from_row(row) for row in await cursor.fetchall())

    # --- admin users ----------------------------------------------------------------

    async def get_admin(self, username: str) -> AdminUser | None:
        return await self._admin(
            f"SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = ?", (username,)
        )

    async def insert_admin(
        self, username: str, hashed_password: str, email: str | None
    ) -> AdminUser:
        now = iso_utc(self._clock())
        try:
            admin = await self._admin(
                "INSERT INTO admin_users (username, hashed_password, email, is_active,"
                " created_at, password_changed_at) VALUES (?, ?, ?, 1, ?, ?)"
                f" RETURNING {ADMIN_COLUMNS}",
                (username, hashed_password, email, now, now),
            )
        except sqlite3.IntegrityError:
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
        changes = admin_update(
            self._clock(),
            hashed_password=hashed_password,
            is_active=is_active,
            logged_in=logged_in,
        )
        if not changes:
            return await self.get_admin(username)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        return await self._admin(
            f"UPDATE admin_users SET {assignments} WHERE username = ? RETURNING {ADMIN_COLUMNS}",
            (*changes.values(), username),
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
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                iso_utc(self._clock()),
                actor.name,
                actor.door,
                action,
                target,
                None if before is None else orjson.dumps(before).decode(),
                None if after is None else orjson.dumps(after).decode(),
            ),
        )

    async def _key(self, query: str, params: tuple[Any, ...]) -> ApiKey | None:
        """The key a change RETURNs (`KEY_COLUMNS`), with its user's budget."""
        async with self._db.execute(query, params) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        async with self._db.execute(
            "SELECT budget_tokens, budget_period FROM user_budgets WHERE user_id = ?",
            (row[3],),  # its user_id
        ) as cursor:
            budget = await cursor.fetchone()
        return with_user_budget(row, budget)

    async def _admin(self, query: str, params: tuple[Any, ...]) -> AdminUser | None:
        async with self._db.execute(query, params) as cursor:
            row = await cursor.fetchone()
        return admin_from_row(row) if row else None
