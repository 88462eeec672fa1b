"""What the store keeps of issue 15's limits, on SQLite and on PostgreSQL alike: a
key's limit overrides, user budgets (carried by the user's keys, through the key
change log), and the tokens a budget has spent since its period began."""

from __future__ import annotations

import dataclasses

import pytest

from llmgw.keys import ApiKey
from llmgw.ledger import UsageRecord
from llmgw.store import Store

from .conftest import Database

pytestmark = pytest.mark.both_databases

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole hour


async def new_key(store: Store, user_id: str = "alice", n: int = 0, **fields: object) -> ApiKey:
    async with store.transaction() as tx:
        return await tx.insert_key(
            key_hash=f"hash-{user_id}-{n}",
            key_prefix="sk-internal-abcd",
            user_id=user_id,
            tier="free",
            description="",
            **fields,  # type: ignore[arg-type]
        )


def record(n: int, key: ApiKey | None, at: float, tokens: tuple[int, int]) -> UsageRecord:
    return UsageRecord(
        f"req-{n}", key.user_id if key else "bob", key.id if key else None,
        "/v1/chat/completions", "POST", 200, 10.0, 1.0, *tokens, "reported", "m", "u", at,
    )  # fmt: skip


async def test_a_key_keeps_its_limit_overrides_and_updates_them(database: Database) -> None:
    store = await database.open_store()
    try:
        key = await new_key(
            store, tokens_per_minute=1000, tokens_per_day=0, max_in_flight=2,
            budget_tokens=50_000, budget_period="week",
        )  # fmt: skip
        assert (key.tokens_per_minute, key.tokens_per_day, key.max_in_flight) == (1000, 0, 2)
        assert (key.budget_tokens, key.budget_period) == (50_000, "week")
        assert await store.get_key(key.id) == key
        view = key.public()
        assert (view["tokens_per_day"], view["budget_period"]) == (0, "week")
        assert "user_budget_tokens" not in view
        async with store.transaction() as tx:
            changed = await tx.update_key(
                key.id, {"tokens_per_minute": None, "budget_period": "day", "max_in_flight": 0}
            )
        assert changed is not None
        assert (changed.tokens_per_minute, changed.max_in_flight) == (None, 0)
        assert (changed.budget_tokens, changed.budget_period) == (50_000, "day")
        assert await store.get_key(key.id) == changed
    finally:
        await store.close()


@pytest.mark.parametrize(
    "fields",
    [{"tokens_per_minute": -1}, {"budget_tokens": -5}, {"budget_period": "year"}],
    ids=["negative-tokens", "negative-budget", "bad-period"],
)
async def test_the_database_refuses_a_bad_limit(database: Database, fields: object) -> None:
    """The handlers check first; the CHECKs hold whatever writes."""
    store = await database.open_store()
    try:
        key = await new_key(store)
        with pytest.raises(Exception):  # noqa: B017, PT011 - each driver's own IntegrityError
            async with store.transaction() as tx:
                await tx.update_key(key.id, fields)  # type: ignore[arg-type]
        assert await store.get_key(key.id) == key
    finally:
        await store.close()


async def test_a_user_budget_reaches_every_key_of_the_user_through_the_change_log(
    database: Database,
) -> None:
    store = await database.open_store()
    try:
        first, second = await new_key(store, n=1), await new_key(store, n=2)
        other = await new_key(store, "bob")
        version = await store.key_version()
        async with store.transaction() as tx:
            changed = await tx.set_user_budget("alice", 1_000_000, "month")
        assert changed.before is None
        assert changed.after == {
            "user_id": "alice", "budget_tokens": 1_000_000, "budget_period": "month",
        }  # fmt: skip
        assert [k.id for k in changed.keys] == [first.id, second.id]
        assert all(
            (k.user_budget_tokens, k.user_budget_period) == (1_000_000, "month")
            for k in changed.keys
        )
        # Read back: by the JOIN, as the key table and the other replicas read keys.
        assert (await store.get_key(first.id)) == changed.keys[0]
        loaded = {k.id: k for k in await store.load_keys()}
        assert loaded[second.id].user_budget_tokens == 1_000_000
        assert loaded[other.id].user_budget_tokens is None
        async with store.transaction() as tx:
            since = await tx.key_changes_since(version)
        assert set(since.keys) == {first.id, second.id}
        assert since.keys[first.id] == changed.keys[0]

        # A change of a key keeps (and returns) its user's budget.
        async with store.transaction() as tx:
            updated = await tx.update_key(first.id, {"description": "x"})
        assert updated is not None
        assert (updated.user_budget_tokens, updated.user_budget_period) == (1_000_000, "month")

        async with store.transaction() as tx:
            again = await tx.set_user_budget("alice", 5, "day")
        assert again.before == changed.after
        assert await store.user_budget("alice") == again.after
        async with store.transaction() as tx:
            await tx.set_user_budget("carol", 7, "week")  # no keys yet: a budget all the same
        assert [b["user_id"] for b in await store.user_budgets()] == ["alice", "carol"]
        assert (await new_key(store, "carol")).user_budget_tokens == 7

        async with store.transaction() as tx:
            cleared = await tx.clear_user_budget("alice")
        assert (cleared.before, cleared.after) == (again.after, None)
        assert all(k.user_budget_tokens is None for k in cleared.keys)
        assert await store.user_budget("alice") is None
        async with store.transaction() as tx:
            nothing = await tx.clear_user_budget("alice")
        assert (nothing.before, nothing.after, nothing.keys) == (None, None, ())
        # A deleted key's change still reads as deleted, with or without a budget.
        async with store.transaction() as tx:
            await tx.delete_key(second.id)
            assert (await tx.key_changes_since(version)).keys[second.id] is None
    finally:
        await store.close()


async def test_tokens_since_is_exact_to_the_row(database: Database) -> None:
    """Whole hours come from the rollups, the rest of `since`'s hour from the rows:
    the sum is the rows' at or after `since`, whatever hour `since` falls in."""
    store = await database.open_store()
    try:
        key, other = await new_key(store), await new_key(store, n=1)
        times = [T0 - 1, T0, T0 + 1799.9995, T0 + 1800, T0 + 3599.999, T0 + 3600, T0 + 86_400]
        rows = [record(n, key, at, (n + 1, 10 * (n + 1))) for n, at in enumerate(times)]
        rows += [
            record(100, other, T0 + 5, (1000, 1000)),  # alice's too, another key
            record(101, None, T0 + 5, (500, 0)),  # bob's, without a key
        ]
        assert await store.insert_request_logs(rows) == len(rows)

        def spent(since: float) -> int:
            return sum(
                r.prompt_tokens + r.completion_tokens
                for r in rows
                if r.api_key_id == key.id and r.timestamp >= since
            )

        for since in (T0 - 3600, T0 - 1, T0, T0 + 0.001, T0 + 1800, T0 + 1800.001, T0 + 3600,
                      T0 + 7200, T0 + 86_400, T0 + 86_401):  # fmt: skip
            assert await store.tokens_since(since, key_id=key.id) == spent(since), since
        assert await store.tokens_since(T0, user_id="alice") == spent(T0) + 2000
        assert await store.tokens_since(T0 + 1800, user_id="alice") == spent(T0 + 1800)
        assert await store.tokens_since(T0, user_id="bob") == 500
        assert await store.tokens_since(T0, user_id="nobody") == 0
        with pytest.raises(ValueError, match="key_id or user_id"):
            await store.tokens_since(T0, key_id=key.id, user_id="alice")
    finally:
        await store.close()


async def test_tokens_since_survives_a_batch_written_twice(database: Database) -> None:
    store = await database.open_store()
    try:
        key = await new_key(store)
        batch = [record(n, key, T0 + 60 * n, (10, 1)) for n in range(3)]
        await store.insert_request_logs(batch)
        await store.insert_request_logs(
            [*batch, dataclasses.replace(batch[0], request_id="req-9", timestamp=T0 + 7200)]
        )
        assert await store.tokens_since(T0, key_id=key.id) == 44
        assert await store.tokens_since(T0 + 61, key_id=key.id) == 22
    finally:
        await store.close()


async def test_a_user_budget_is_refused_below_zero(database: Database) -> None:
    store = await database.open_store()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - each driver's own IntegrityError
            async with store.transaction() as tx:
                await tx.set_user_budget("alice", -1, "month")
        assert await store.user_budgets() == []
    finally:
        await store.close()
