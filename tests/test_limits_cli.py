"""`llmgw key add|update|show` with token, in-flight and budget limits, `llmgw user
budget|budgets` and `llmgw usage`'s budget column: the real CLI against a real
gateway's admin socket."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from llmgw.ledger import UsageRecord
from llmgw.state import KEYS, STORE

from .conftest import CliRun, Gateway, run_llmgw

pytestmark = pytest.mark.both_databases


async def cli(gateway: Gateway, *args: str) -> CliRun:
    return await run_llmgw("--socket", str(gateway.socket_path), *args)


async def ok_json(gateway: Gateway, *args: str) -> Any:
    code, out, err = await cli(gateway, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_key_limits_are_set_dropped_back_to_the_tier_and_shown(gateway: Gateway) -> None:
    created = await ok_json(
        gateway, "key", "add", "--user", "ann", "--tokens-per-minute", "1000",
        "--tokens-per-day", "0", "--max-in-flight", "2", "--budget-tokens", "50000",
        "--budget-period", "week",
    )  # fmt: skip
    key_id = str(created["id"])
    limits = ("tokens_per_minute", "tokens_per_day", "max_in_flight", "budget_tokens")
    assert [created[n] for n in limits] == [1000, 0, 2, 50000]
    assert created["budget_period"] == "week"

    updated = await ok_json(
        gateway, "key", "update", key_id, "--tokens-per-minute", "tier", "--max-in-flight", "5",
        "--budget-period", "tier",
    )  # fmt: skip
    assert [updated[n] for n in limits] == [None, 0, 5, 50000]
    assert updated["budget_period"] is None
    live = gateway.app[KEYS].get(created["id"])
    assert live is not None
    assert (live.tokens_per_minute, live.max_in_flight) == (None, 5)

    code, out, err = await cli(gateway, "key", "show", key_id)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["tokens_per_minute"].split()[1] == "tier"
    assert lines["max_in_flight"].split()[1] == "5"
    assert "limits now" in out
    assert "requests/minute" in out and "in flight" in out and "0/5" in out
    shown = await ok_json(gateway, "key", "show", key_id)
    assert "limits" in shown


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--tokens-per-minute", "-1"], "--tokens-per-minute"),
        (["--max-in-flight", "many"], "--max-in-flight"),
        (["--budget-period", "year"], "--budget-period"),
    ],
)
async def test_bad_key_limits_are_usage_errors_naming_the_flag(
    gateway: Gateway, args: list[str], flag: str
) -> None:
    created = await gateway.create_key("kim")
    for command in (["key", "add", "--user", "kim"], ["key", "update", str(created["id"])]):
        code, out, err = await cli(gateway, *command, *args)
        assert (code, out) == (2, ""), err
        assert flag in err


async def test_user_budgets_from_the_command_line(gateway: Gateway) -> None:
    key = await gateway.create_key("dana")
    code, _, err = await cli(gateway, "user", "budget", "dana")
    assert code == 1
    assert "has no budget" in err and "llmgw user budget dana --tokens" in err

    set_ = await ok_json(gateway, "user", "budget", "dana", "--tokens", "1000000")
    assert set_ == {"user_id": "dana", "budget_tokens": 1000000, "budget_period": "month"}
    live = gateway.app[KEYS].get(key["id"])
    assert live is not None and live.user_budget_tokens == 1000000
    await ok_json(gateway, "user", "budget", "dana", "--tokens", "500", "--period", "day")
    code, out, err = await cli(gateway, "user", "budget", "dana")
    assert code == 0, err
    assert out.strip() == "dana: 500 tokens a day"
    assert await ok_json(gateway, "user", "budgets") == [
        {"user_id": "dana", "budget_tokens": 500, "budget_period": "day"}
    ]
    code, out, err = await cli(gateway, "user", "budgets")
    assert out.split() == ["USER", "TOKENS", "PERIOD", "dana", "500", "day"]

    code, _, err = await cli(gateway, "user", "budget", "dana", "--clear")
    assert code == 0, err
    assert "Removed the budget of dana" in err
    code, _, err = await cli(gateway, "user", "budget", "dana", "--clear")
    assert code == 1
    assert "no budget" in err
    for bad, words in (
        (["--clear", "--tokens", "5"], "--clear"),
        (["--period", "day"], "--period needs --tokens"),
        (["--tokens", "-3"], "--tokens"),
    ):
        code, _, err = await cli(gateway, "user", "budget", "dana", *bad)
        assert code == 2
        assert words in err
    assert await ok_json(gateway, "user", "budgets") == []


async def test_usage_shows_the_budget_of_the_rows_that_have_one(gateway: Gateway) -> None:
    budgeted = await gateway.create_key("dana", budget_tokens=9000, budget_period="day")
    plain = await gateway.create_key("eve")
    await ok_json(gateway, "user", "budget", "dana", "--tokens", "70000", "--period", "week")
    store = gateway.app[STORE]
    records = [
        UsageRecord(f"r{n}", key["user_id"], key["id"], "/v1/chat/completions", "POST", 200,
                    5.0, 1.0, 10, 5, "reported", "m", "u", time.time())
        for n, key in enumerate((budgeted, plain))
    ]  # fmt: skip
    await store.insert_request_logs(records)

    code, out, err = await cli(gateway, "usage", "--by", "key")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-2:] == ["BUDGET", "USED"]
    by_key = {row.split()[0]: row for row in rows}
    assert by_key[str(budgeted["id"])].endswith("15/9,000 (day)")
    assert by_key[str(plain["id"])].endswith("-")

    code, out, err = await cli(gateway, "usage", "--by", "user")
    assert code == 0, err
    by_user = {row.split()[0]: row for row in out.splitlines()[1:]}
    assert by_user["dana"].endswith("/70,000 (week)")
    assert by_user["eve"].endswith("-")
    report = await ok_json(gateway, "usage", "--by", "user")
    assert {g["group"] for g in report["data"]} == {"dana", "eve"}  # JSON: the report as sent
