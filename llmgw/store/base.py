"""The store's interface: what the gateway keeps in its database, and how it asks.

`Store` is all the rest of the gateway sees of its database: the handlers, the ledger
and the app. Reads go to the store (on a connection of their own: they never queue
behind a ledger batch); every change runs on the `Transaction` it belongs to, with its
audit row, and in-memory state follows on commit (`Transaction.on_commit`). Every key
change also records a numbered entry in the key change log, in its transaction, which
other replicas read to follow (`key_sync`). SQLite
(`sqlite.py`) and PostgreSQL (`postgres.py`) implement it; no module above the store
imports a database driver, nor knows which database it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..api_types import AdminView, AuditEntry, BudgetPeriod, RequestRow, UsageReport, UserBudget
from ..keys import ApiKey
from ..ledger import UsageRecord
from ..rollups import Grouping


class StoreError(Exception):
    """Something the database refused or could not do; the message says what."""


class AlreadyExists(StoreError):
    """A row with that unique name exists already."""


class StoreUnavailable(StoreError):
    """The database cannot take a change now; the message says why and what to do."""


class DatabaseGone(StoreUnavailable):
    """The database path no longer names the file that is open."""


class Unsupported(StoreError):
    """This database does not do that; the message says what to use instead."""


@dataclass(frozen=True, slots=True)
class AdminUser:
    id: int
    username: str
    hashed_password: str = field(repr=False)
    email: str | None
    is_active: bool
    created_at: str
    last_login: str | None
    password_changed_at: str | None
    tokens_valid_after: str | None  # tokens issued before it are refused

    def public(self) -> AdminView:
        return AdminView(
            id=self.id,
            username=self.username,
            email=self.email,
            is_active=self.is_active,
            created_at=self.created_at,
            last_login=self.last_login,
            password_changed_at=self.password_changed_at,
        )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made an admin change, and through which door."""

    name: str
    door: str


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """The keys changed after a version of the key change log, as they are now."""

    version: int  # the newest change read (the version asked after, if none)
    keys: Mapping[int, ApiKey | None]  # by id: its row now, or None once deleted


@dataclass(frozen=True, slots=True)
class UserBudgetChange:
    """A user's budget set or cleared: as it was, as it is, and the user's keys now
    (each carries the budget; the in-memory key table takes them on commit)."""

    before: UserBudget | None
    after: UserBudget | None
    keys: tuple[ApiKey, ...]


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What `/health` says of the database, without asking it: the watcher's last
    look and the ledger's last write (seconds ago; None: not yet)."""

    ok: bool
    error: str | None
    checked_s_ago: float | None
    written_s_ago: float | None


class Transaction(Protocol):
    """One change: everything on it commits together, or nothing does."""

    def on_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once committed, before the next change starts: in-memory state
        changes in the same order as the database."""

    async def get_key(self, key_id: int) -> ApiKey | None: ...

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
        """Raises `AlreadyExists` for a key hash taken."""

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> ApiKey | None:
        """Set only the fields named in `changes`: concurrent updates of different
        fields of one key all land."""

    async def delete_key(self, key_id: int) -> ApiKey | None: ...

    async def key_changes_since(self, version: int) -> KeyChanges:
        """The keys changed (by any replica) after `version` of the key change log.

        On a transaction, so that what is read is applied (`on_commit`) in order with
        this process's own changes: never an older row over a newer one."""

    async def set_user_budget(
        self, user_id: str, budget_tokens: int, budget_period: BudgetPeriod
    ) -> UserBudgetChange:
        """Give the user (all the user's keys together) a budget, or change it; every
        key of the user enters the key change log, so that all replicas follow."""

    async def clear_user_budget(self, user_id: str) -> UserBudgetChange:
        """Remove the user's budget (`after` None; `before` None too if there was none,
        and then nothing changed)."""

    async def get_admin(self, username: str) -> AdminUser | None: ...

    async def insert_admin(
        self, username: str, hashed_password: str, email: str | None
    ) -> AdminUser:
        """Raises `AlreadyExists` for a username taken."""

    async def update_admin(
        self,
        username: str,
        *,
        hashed_password: str | None = None,
        is_active: bool | None = None,
        logged_in: bool = False,
    ) -> AdminUser | None: ...

    async def record_audit(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None: ...


class Store(Protocol):
    @property
    def name(self) -> str:
        """The database as messages and logs name it (its path, or PostgreSQL's host and
        database): never a password."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A change; raises `StoreUnavailable` when the database cannot take one."""

    async def close(self) -> None: ...

    # --- reads ----------------------------------------------------------------------

    async def load_keys(
        self, *, user_id: str | None = None, tier: str | None = None, active: bool | None = None
    ) -> list[ApiKey]: ...

    async def get_key(self, key_id: int) -> ApiKey | None: ...

    async def key_version(self) -> int:
        """The newest version of the key change log (0: no change yet). Read before
        `load_keys`, a change made in between is read again later: harmless."""

    async def listen_key_changes(
        self, on_change: Callable[[int], None], on_listening: Callable[[], None]
    ) -> None:
        """Until cancelled, or the connection is lost (`StoreUnavailable`): call
        `on_change(version)` as each key change any replica makes commits, this one's
        included, and `on_listening()` once listening has begun (what committed before
        may have been missed). Returns at once where no other process changes keys."""

    async def user_budget(self, user_id: str) -> UserBudget | None: ...

    async def user_budgets(self) -> list[UserBudget]:
        """Every user budget, by user id."""

    async def list_admins(self) -> list[AdminUser]: ...

    async def get_admin(self, username: str) -> AdminUser | None: ...

    async def count_active_admins(self) -> int: ...

    async def recent_requests(
        self,
        limit: int,
        *,
        after_id: int = 0,
        user_id: str | None = None,
        status: tuple[int, int] | None = None,
        except_status: int | None = None,
    ) -> list[RequestRow]:
        """The newest ledger rows (newest first) with an id above `after_id`,
        optionally of one user and with a status in [status[0], status[1]] other than
        `except_status`."""

    async def list_audit(self, limit: int, action: str | None = None) -> list[AuditEntry]:
        """The newest audit rows first; `action` filters by prefix (`key.`, `admin.`)."""

    async def usage_summary(self, *, days: int, by: Grouping, now: float) -> UsageReport:
        """The body of `GET /usage` (`rollups.summarize`) for the last `days`."""

    async def tokens_since(
        self, since: float, *, key_id: int | None = None, user_id: str | None = None
    ) -> int:
        """Prompt + completion tokens of the ledger rows of one key or one user (give
        exactly one) whose timestamp is at or after `since` (epoch seconds): what a
        budget has spent since its period began, read when the limiter first needs
        it. Exact to the millisecond the ledger stores: the hours after `since`'s from
        the rollups (folded with the rows, in their transaction), the rest of
        `since`'s hour from the rows."""

    # --- the ledger -----------------------------------------------------------------

    async def insert_request_logs(self, records: Sequence[UsageRecord]) -> int:
        """One transaction: the records not written before (by request id), their
        keys' last use and their rollups; how many were new. Raises
        `ledger.RecordError` when a record itself cannot be stored."""

    async def prune_request_logs(self, before: float) -> int:
        """Delete ledger rows older than `before` (epoch seconds); how many."""

    # --- the database itself --------------------------------------------------------

    async def backup(self) -> Path:
        """A consistent, integrity-checked copy of the database in a new private file
        (the caller removes it); `Unsupported` where the database has its own tools."""

    async def watch(self, interval: float) -> None:
        """Look at the database every `interval` seconds (until cancelled), for
        `health`; a change made meanwhile is looked at too."""

    def health(self) -> StoreHealth:
        """What `/health` says of the database: the last look and write, and what is
        wrong now if the file is not where it belongs (a `stat`, no query)."""

    async def check(self) -> None:
        """Raise `StoreUnavailable` unless the database can be used now (cheap)."""

    async def write_back(self) -> None:
        """At shutdown: make sure the ledger's last records have a database to go to."""
