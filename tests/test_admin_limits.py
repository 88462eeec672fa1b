"""Issue 15's limits through the admin API, on both doors: a key's token, in-flight and
budget overrides, user budgets (which reach the key table at once), the tiers' new
fields, and each limit of a key as `GET /keys/{id}` shows it."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.admin_client import AdminApiError, AdminClient
from llmgw.state import KEYS

from .conftest import Gateway, GatewayFactory, with_secret

pytestmark = pytest.mark.both_databases

PASSWORD = "correct horse battery staple"
LIMITS = {
    "tokens_per_minute": 1000,
    "tokens_per_day": 0,
    "max_in_flight": 2,
    "budget_tokens": 500_000,
    "budget_period": "week",
}


async def test_a_key_takes_token_in_flight_and_budget_limits_and_drops_them(
    gateway: Gateway,
) -> None:
    created = await gateway.create_key("ann", **LIMITS)
    assert {name: created[name] for name in LIMITS} == LIMITS  # type: ignore[literal-required]
    key_id = created["id"]
    assert gateway.app[KEYS].get(key_id).max_in_flight == 2  # type: ignore[union-attr]
    async with gateway.admin() as admin:
        shown = await admin.get_key(key_id)
        assert {name: shown[name] for name in LIMITS} == LIMITS  # type: ignore[literal-required]
        assert "limits" in shown
        updated = await admin.update_key(
            key_id, {"tokens_per_minute": None, "budget_period": "day", "tokens_per_day": 9}
        )
        assert (updated["tokens_per_minute"], updated["tokens_per_day"]) == (None, 9)
        assert (updated["budget_tokens"], updated["budget_period"]) == (500_000, "day")
        live = gateway.app[KEYS].get(key_id)
        assert live is not None
        assert (live.tokens_per_minute, live.tokens_per_day, live.budget_period) == (None, 9, "day")
        [entry] = await admin.audit(action="key.update")
    before, after = entry["before"], entry["after"]
    assert before is not None and after is not None
    assert (before["tokens_per_minute"], after["tokens_per_minute"]) == (1000, None)
    assert (before["budget_period"], after["budget_period"]) == ("week", "day")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tokens_per_minute": -1}, "0 or more"),
        ({"tokens_per_day": "lots"}, "0 or more"),
        ({"max_in_flight": 1.5}, "0 or more"),
        ({"budget_tokens": True}, "0 or more"),
        ({"budget_period": "year"}, "day, week, month"),
    ],
)
async def test_bad_limits_are_400_naming_the_field(
    gateway: Gateway, body: dict[str, Any], words: str
) -> None:
    created = await gateway.create_key("gus")
    name = next(iter(body))
    async with gateway.admin() as admin:
        for attempt in (admin.update_key(created["id"], body), admin.create_key("gus", **body)):
            with pytest.raises(AdminApiError) as caught:
                await attempt
            assert (caught.value.status, caught.value.param) == (400, name)
            assert words in caught.value.message


async def test_tiers_show_every_limit(gateway: Gateway) -> None:
    async with gateway.admin() as admin:
        tiers = {t["name"]: t for t in (await admin.tiers())["data"]}
    assert tiers["free"] == {
        "name": "free", "requests_per_minute": 10, "requests_per_hour": 100,
        "tokens_per_minute": 0, "tokens_per_day": 0, "max_in_flight": 0, "budget_tokens": 0,
        "budget_period": "month", "default_max_tokens": 4096, "priority": 10,
    }  # fmt: skip
    assert (tiers["standard"]["priority"], tiers["premium"]["priority"]) == (5, 0)


async def user_budget_lifecycle(gateway: Gateway, admin: AdminClient) -> None:
    """Set, change, read, list and clear a user budget; the key table follows each."""
    first, second = await gateway.create_key("dana"), await gateway.create_key("dana")
    other = await gateway.create_key("eve")
    table = gateway.app[KEYS]

    def budgets() -> list[tuple[int | None, str | None]]:
        keys = [table.get(k["id"]) for k in (first, second, other)]
        return [(k.user_budget_tokens, k.user_budget_period) for k in keys if k]

    assert await admin.user_budgets() == []
    set_ = await admin.set_user_budget("dana", 1_000_000, "month")
    assert set_ == {"user_id": "dana", "budget_tokens": 1_000_000, "budget_period": "month"}
    assert budgets() == [(1_000_000, "month"), (1_000_000, "month"), (None, None)]
    changed = await admin.set_user_budget("dana", 2000, "day")
    assert budgets()[:2] == [(2000, "day")] * 2
    assert await admin.user_budget("dana") == changed
    assert await admin.user_budgets() == [changed]
    with pytest.raises(AdminApiError) as caught:
        await admin.user_budget("eve")
    assert caught.value.status == 404
    assert "no budget" in caught.value.message
    assert await admin.clear_user_budget("dana") == changed
    assert budgets() == [(None, None)] * 3
    with pytest.raises(AdminApiError) as caught:
        await admin.clear_user_budget("dana")
    assert caught.value.status == 404
    for tokens, period, param in ((-1, "day", "budget_tokens"), (5, "year", "budget_period")):
        with pytest.raises(AdminApiError) as caught:
            await admin.set_user_budget("dana", tokens, period)
        assert (caught.value.status, caught.value.param) == (400, param)
    assert await admin.user_budgets() == []
    entries = await admin.audit(action="user.budget.")
    assert [e["action"] for e in entries] == [
        "user.budget.clear", "user.budget.set", "user.budget.set",
    ]  # fmt: skip
    assert entries[0]["target"] == "user:dana"
    assert entries[0]["before"] == changed and entries[0]["after"] is None
    assert entries[1]["before"] == set_ and entries[1]["after"] == changed


async def test_user_budgets_through_the_socket(gateway: Gateway) -> None:
    async with gateway.admin() as admin:
        await user_budget_lifecycle(gateway, admin)
        # Any text is a user id, a '/' included.
        odd = await admin.set_user_budget("team/ml ops?", 5, "week")
        assert await admin.user_budget("team/ml ops?") == odd
        assert odd["user_id"] == "team/ml ops?"


async def test_user_budgets_through_the_remote_door(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(admin=with_secret("s" * 32))
    async with gateway.admin() as admin:
        await admin.add_admin("ops", PASSWORD)
    async with AdminClient(url=gateway.url) as anonymous:
        token = (await anonymous.login("ops", PASSWORD))["access_token"]
        with pytest.raises(AdminApiError) as caught:
            await anonymous.user_budgets()
        assert caught.value.status == 401
    async with AdminClient(url=gateway.url, token=token) as admin:
        await user_budget_lifecycle(gateway, admin)
        created = await admin.create_key("fay", **LIMITS)
        shown = await admin.get_key(created["id"])
        assert shown["max_in_flight"] == 2
    [entry] = [e for e in await _audit(gateway) if e["action"] == "user.budget.clear"]
    assert entry["actor"] == "admin:ops"


async def _audit(gateway: Gateway) -> list[Any]:
    async with gateway.admin() as admin:
        return list(await admin.audit())


async def test_key_detail_shows_its_limits_now(gateway: Gateway) -> None:
    created = await gateway.create_key("kim", tokens_per_minute=600, max_in_flight=3)
    async with gateway.admin() as admin:
        detail = await admin.get_key(created["id"])
    assert detail["max_in_flight"] == 3
    limits = detail["limits"]
    assert limits is not None
    assert limits["requests_per_minute"]["limit"] == 10
    assert limits["tokens_per_minute"] == {"limit": 600, "remaining": 600, "reset_s": 0.0}
    assert limits["tokens_per_day"] is None  # the free tier's: off
    assert limits["in_flight"] == {"limit": 3, "current": 0}
    assert limits["key_budget"] is None
