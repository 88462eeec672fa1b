"""A change in the PostgreSQL store: the statements of one transaction on one pooled
connection (`PostgresStore.transaction` begins and ends it).

A key change also enters the key change log and NOTIFYs `KEY_CHANNEL` with its version,
which PostgreSQL delivers to every replica listening once (and only if) it commits. The
log's versions come from a sequence, which hands them out in the order asked, not the
order committed: two replicas' changes committing the other way round would let a
reader see version 11 before 10 exists, and skip 10 for ever. So every key change first
takes `KEY_CHANGE_LOCK` (held until commit): key changes commit one at a time across
replicas, in version order. They are admin changes, a few a minute at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

from ..api_types import KEY_LIMITS, BudgetPeriod, UserBudget
from ..keys import ApiKey
from ..times import iso_utc
from .base import Actor, AdminUser, AlreadyExists, KeyChanges, UserBudgetChange
from .postgres_pool import Connection
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

# The channel every key change is NOTIFYed on, with its version as the payload.
KEY_CHANNEL = "llmgw_keys"
# pg_advisory_xact_lock's key for "changing a key": any constant all replicas share.
KEY_CHANGE_LOCK = 0x6C6C_6D67_7701  # "llmgw" and a one


class PostgresTransaction:
    def __init__(self, connection: Connection, clock: Callable[[], float]) -> None:
        self._db = connection
        self._clock = clock
        self.after_commit: list[Callable[[], None]] = []

    def on_commit(self, action: Callable[[], None]) -> None:
        self.after_commit.append(action)

    # --- keys -----------------------------------------------------------------------

    async def get_key(self, key_id: int) -> ApiKey | None:
        row = await self._db.fetchrow(f"{SELECT_KEYS} WHERE api_keys.id = $1", key_id)
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
        await self._lock_keys()
        try:
            key = await self._key(
                "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, description,"
                " is_active, created_at, updated_at, expires_at, allowed_models,"
                f" {', '.join(KEY_LIMITS)})"
                " VALUES ($1, $2, $3, $4, $5, TRUE, $6, $6, $7, $8, $9, $10, $11, $12, $13,"
                f" $14, $15) RETURNING {KEY_COLUMNS}",
                key_hash,
                key_prefix,
                user_id,
                tier,
                description,
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
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a key with that hash exists already") from None
        assert key is not None  # RETURNING always yields the inserted row
        await self._changed(key)
        return key

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> ApiKey | None:
        columns = key_update(changes, self._clock())
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, 1))
        await self._lock_keys()
        return await self._changed(
            await self._key(
                f"UPDATE api_keys SET {assignments} WHERE id = ${len(columns) + 1}"
                f" RETURNING {KEY_COLUMNS}",
                *columns.values(),
                key_id,
            )
        )

    async def delete_key(self, key_id: int) -> ApiKey | None:
        await self._lock_keys()
        return await self._changed(
            await self._key(f"DELETE FROM api_keys WHERE id = $1 RETURNING {KEY_COLUMNS}", key_id)
        )

    async def key_changes_since(self, version: int) -> KeyChanges:
        return key_changes(
            version, await self._db.fetch(KEY_CHANGES_SINCE.format(after="$1"), version)
        )

    async def _lock_keys(self) -> None:
        # Before the key's row is locked: every key change takes the two in this order
        # (a ledger batch takes rows only), so none waits on another in a circle.
        await self._db.execute("SELECT pg_advisory_xact_lock($1)", KEY_CHANGE_LOCK)

    async def _changed(self, key: ApiKey | None) -> ApiKey | None:
        """`key` (changed, unless None) entered in the key change log, and NOTIFYed."""
        if key is not None:
            await self._db.execute(
                "WITH noted AS (INSERT INTO key_changes (key_id, changed_at)"
                " VALUES ($1, $2) RETURNING version)"
                " SELECT pg_notify($3, version::text) FROM noted",
                key.id,
                iso_utc(self._clock()),
                KEY_CHANNEL,
            )
        return key

    # --- user budgets ---------------------------------------------------------------

    async def set_user_budget(
        self, user_id: str, budget_tokens: int, budget_period: BudgetPeriod
    ) -> UserBudgetChange:
        await self._lock_keys()
        before = await self._user_budget(user_id)
        row = await self._db.fetchrow(
            "INSERT INTO user_budgets (user_id, budget_tokens, budget_period, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET"
            " budget_tokens = excluded.budget_tokens, budget_period = excluded.budget_period,"
            f" updated_at = excluded.updated_at RETURNING {USER_BUDGET_COLUMNS}",
            user_id,
            budget_tokens,
            budget_period,
            iso_utc(self._clock()),
        )
        assert row is not None  # RETURNING always yields the row
        return UserBudgetChange(before, user_budget(row), await self._user_keys_changed(user_id))

    async def clear_user_budget(self, user_id: str) -> UserBudgetChange:
        await self._lock_keys()
        row = await self._db.fetchrow(
            f"DELETE FROM user_budgets WHERE user_id = $1 RETURNING {USER_BUDGET_COLUMNS}",
            user_id,
        )
        if row is None:
            return UserBudgetChange(None, None, ())
        return UserBudgetChange(user_budget(row), None, await self._user_keys_changed(user_id))

    async def _user_budget(self, user_id: str) -> UserBudget | None:
        # Under KEY_CHANGE_LOCK, which every change of a user budget takes first.
        row = await self._db.fetchrow(
            f"SELECT {USER_BUDGET_COLUMNS} FROM user_budgets WHERE user_id = $1", user_id
        )
        return user_budget(row) if row else None

    async def _user_keys_changed(self, user_id: str) -> tuple[ApiKey, ...]:
        """Every key of the user entered in the key change log (they carry its budget),
        and one NOTIFY with the newest version: a replica reads all versions up to it."""
        await self._db.execute(
            "WITH noted AS (INSERT INTO key_changes (key_id, changed_at)"
            " SELECT id, $2 FROM api_keys WHERE user_id = $1 ORDER BY id RETURNING version)"
            " SELECT pg_notify($3, max(version)::text) FROM noted HAVING count(*) > 0",
            user_id,
            iso_utc(self._clock()),
            KEY_CHANNEL,
        )
        rows = await self._db.fetch(
            f"{SELECT_KEYS} WHERE api_keys.user_id = $1 ORDER BY api_keys.id", user_id
        )
        return tuple(key_from_row(row) for row in rows)

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
        changes = admin_update(
            self._clock(),
            hashed_password=hashed_password,
            is_active=is_active,
            logged_in=logged_in,
        )
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
        """The key a change RETURNs (`KEY_COLUMNS`), with its user's budget."""
        row = await self._db.fetchrow(query, *params)
        if row is None:
            return None
        budget = await self._db.fetchrow(
            "SELECT budget_tokens, budget_period FROM user_budgets WHERE user_id = $1",
            row["user_id"],
        )
        return with_user_budget(row, budget)

    async def _admin(self, query: str, *params: Any) -> AdminUser | None:
        row = await self._db.fetchrow(query, *params)
        return admin_from_row(row) if row else None
