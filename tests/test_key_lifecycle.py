"""A key's whole life through the admin API and the CLI; every change applies to the
very next request."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from llmgw.admin_client import AdminApiError
from llmgw.state import KEYS, STORE

from .conftest import CliRun, Gateway, run_llmgw

pytestmark = pytest.mark.both_databases

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def chat(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, model: str = "fake-model"
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        json={**CHAT, "model": model},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        await resp.read()
        return resp


async def cli(gateway: Gateway, *args: str) -> CliRun:
    return await run_llmgw("--socket", str(gateway.socket_path), *args)


async def cli_json(gateway: Gateway, *args: str) -> Any:
    code, out, err = await cli(gateway, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_every_change_applies_to_the_next_request(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = await cli_json(gateway, "key", "add", "--user", "ann", "--tier", "free")
    key, key_id = created["key"], str(created["id"])
    assert (await chat(http, gateway, key)).headers["X-RateLimit-Limit-Minute"] == "10"

    updated = await cli_json(gateway, "key", "update", key_id, "--tier", "premium")
    assert updated["tier"] == "premium"
    assert (await chat(http, gateway, key)).headers["X-RateLimit-Limit-Minute"] == "100"

    await cli_json(gateway, "key", "update", key_id, "--rpm", "7", "--rph", "70")
    resp = await chat(http, gateway, key)
    assert resp.headers["X-RateLimit-Limit-Minute"] == "7"
    assert resp.headers["X-RateLimit-Limit-Hour"] == "70"
    cleared = await cli_json(gateway, "key", "update", key_id, "--rpm", "tier")
    assert cleared["requests_per_minute"] is None
    assert cleared["requests_per_hour"] == 70
    assert (await chat(http, gateway, key)).headers["X-RateLimit-Limit-Minute"] == "100"

    await cli_json(gateway, "key", "update", key_id, "--model", "other-model")
    assert (await chat(http, gateway, key)).status == 403
    await cli_json(gateway, "key", "update", key_id, "--all-models")
    assert (await chat(http, gateway, key)).status == 200

    await cli_json(gateway, "key", "update", key_id, "--disable")
    assert (await chat(http, gateway, key)).status == 401
    await cli_json(gateway, "key", "update", key_id, "--enable")
    assert (await chat(http, gateway, key)).status == 200

    await cli_json(gateway, "key", "update", key_id, "--expires", "30d", "--description", "ci")
    shown = await cli_json(gateway, "key", "show", key_id)
    assert shown["expires_at"] is not None
    assert shown["description"] == "ci"
    never = await cli_json(gateway, "key", "update", key_id, "--expires", "never")
    assert never["expires_at"] is None


async def test_rotation_keeps_the_id_and_history_and_refuses_the_old_secret(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = await gateway.create_key("ben")
    assert (await chat(http, gateway, created["key"])).status == 200
    code, out, err = await cli(gateway, "key", "rotate", str(created["id"]))
    assert code == 0, err
    new_key = out.strip()
    assert new_key.startswith("sk-internal-")
    assert new_key != created["key"]
    assert "will not be shown again" in err
    assert (await chat(http, gateway, created["key"])).status == 401
    assert (await chat(http, gateway, new_key)).status == 200
    rows = await gateway.ledger_rows()
    assert [(r["api_key_id"], r["status_code"]) for r in rows] == [
        (created["id"], 200),
        (created["id"], 200),
    ]  # the 401 of the old secret belongs to no key
    async with gateway.admin() as admin:
        after = await admin.get_key(created["id"])
    assert after["key_prefix"] == new_key[:16]
    assert after["last_used_at"] is not None


async def test_each_change_says_what_state_the_key_is_left_in(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """On stderr, with the command that lets a refused key in again; --json unchanged."""
    created = await gateway.create_key("dan")
    key_id = str(created["id"])
    enable = f"`llmgw key update {key_id} --enable`"

    code, out, err = await cli(gateway, "key", "update", key_id, "--disable")
    assert (code, out) == (0, "")
    assert f"It is revoked: refused from the very next request ({enable}" in err
    code, out, err = await cli(gateway, "key", "update", key_id, "--disable")
    assert f"It is still revoked: {enable} to let it in again." in err
    code, out, err = await cli(gateway, "key", "revoke", key_id)
    assert (code, out) == (0, "")
    assert f"Key {key_id} (" in err and "was already revoked; nothing changed." in err

    code, out, err = await cli(gateway, "key", "rotate", key_id)
    assert code == 0, err
    new_key = out.strip()  # stdout is the secret alone
    assert new_key.startswith("sk-internal-")
    assert f"It is still revoked: {enable} to use the new secret." in err
    assert (await chat(http, gateway, new_key)).status == 401  # as the message says

    code, out, err = await cli(gateway, "key", "update", key_id, "--enable")
    assert (code, out) == (0, "")
    assert "It is active again: its secret works from the very next request." in err
    assert (await chat(http, gateway, new_key)).status == 200
    code, out, err = await cli(gateway, "key", "update", key_id, "--description", "x")
    assert err.rstrip().endswith("It is active.")
    code, out, err = await cli(gateway, "key", "rotate", key_id)
    assert "revoked" not in err and "expired" not in err

    code, out, err = await cli(gateway, "key", "revoke", key_id)
    assert f"Revoked key {key_id} (" in err
    assert f"It is revoked: refused from the very next request ({enable}" in err
    revoked = await cli_json(gateway, "key", "revoke", key_id)
    async with gateway.admin() as admin:
        shown = await admin.get_key(created["id"])
    # The API's view, nothing added (`GET /keys/{id}` adds the limits now).
    assert revoked == {name: value for name, value in shown.items() if name != "limits"}


async def test_rotating_an_expired_key_says_it_has_expired(gateway: Gateway) -> None:
    created = await gateway.create_key("eve")
    store = gateway.app[STORE]
    # The API refuses a past expiry; the CLI, which judges by its own clock, must see
    # one that passed meanwhile.
    async with store.transaction() as tx:
        await tx.update_key(created["id"], {"expires_at": time.time() - 60})
    code, _, err = await cli(gateway, "key", "rotate", str(created["id"]))
    assert code == 0, err
    assert "It expired at " in err
    assert f"`llmgw key update {created['id']} --expires 30d` (or a date, or never)" in err


async def test_delete_keeps_the_usage_history(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = await gateway.create_key("cat")
    await chat(http, gateway, created["key"])
    code, _, err = await cli(gateway, "key", "delete", str(created["id"]))
    assert code == 2
    assert "--yes" in err  # no terminal to confirm on
    deleted = await cli_json(gateway, "key", "delete", str(created["id"]), "--yes")
    assert deleted["deleted"] is True
    assert (await chat(http, gateway, created["key"])).status == 401
    code, _, err = await cli(gateway, "key", "show", str(created["id"]))
    assert code == 1
    assert f"No API key with id {created['id']}" in err
    rows = await gateway.ledger_rows()
    assert [r["user_id"] for r in rows] == ["cat"]


async def test_list_filters(gateway: Gateway) -> None:
    a = await gateway.create_key("dora", tier="free")
    b = await gateway.create_key("dora", tier="premium")
    c = await gateway.create_key("emil", tier="premium")
    async with gateway.admin() as admin:
        await admin.revoke_key(c["id"])

    def ids(keys: list[dict[str, Any]]) -> list[int]:
        return [k["id"] for k in keys]

    assert ids(await cli_json(gateway, "key", "list", "--user", "dora")) == [a["id"], b["id"]]
    assert ids(await cli_json(gateway, "key", "list", "--tier", "premium")) == [b["id"], c["id"]]
    assert ids(await cli_json(gateway, "key", "list", "--inactive")) == [c["id"]]
    assert ids(await cli_json(gateway, "key", "list", "--active", "--tier", "premium")) == [b["id"]]


@pytest.mark.parametrize(
    ("args", "option", "param"),
    [
        (("--tier", "gold"), "--tier", "tier"),
        (("--expires", "someday"), "--expires", "expires_at"),
        (("--expires", "2001-01-01"), "--expires", "expires_at"),
        (("--model", " "), "--model", "allowed_models"),
    ],
)
async def test_invalid_values_are_400_and_exit_2_naming_the_field(
    gateway: Gateway, args: tuple[str, ...], option: str, param: str
) -> None:
    created = await gateway.create_key("finn")
    code, out, err = await cli(gateway, "key", "update", str(created["id"]), *args)
    assert code == 2
    assert out == ""
    assert option in err
    assert "Traceback" not in err
    body = {"tier": "gold", "expires_at": "someday", "allowed_models": [" "]}[param]
    async with gateway.admin() as admin:
        with pytest.raises(AdminApiError) as caught:
            await admin.update_key(created["id"], {param: body})
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    "body",
    [{"requests_per_minute": 0}, {"requests_per_hour": -5}, {"requests_per_minute": "ten"}],
)
async def test_invalid_limits_are_refused(gateway: Gateway, body: dict[str, Any]) -> None:
    created = await gateway.create_key("gus")
    async with gateway.admin() as admin:
        with pytest.raises(AdminApiError) as caught:
            await admin.update_key(created["id"], body)
    assert caught.value.status == 400
    assert caught.value.param == next(iter(body))
    code, _, err = await cli(gateway, "key", "update", str(created["id"]), "--rpm", "0")
    assert code == 2
    assert "--rpm" in err


@pytest.mark.parametrize("command", ["show", "update", "revoke", "rotate", "delete"])
async def test_unknown_key_id_is_404_and_exit_1(gateway: Gateway, command: str) -> None:
    extra = {"update": ["--tier", "free"], "delete": ["--yes"]}.get(command, [])
    code, out, err = await cli(gateway, "key", command, "4242", *extra)
    assert code == 1
    assert out == ""
    assert "No API key with id 4242." in err


async def test_concurrent_updates_of_one_key_never_lose_one(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = await gateway.create_key("hana", tier="free")
    changes: list[dict[str, Any]] = [{"description": f"note {i}"} for i in range(20)]
    changes += [
        {"tier": "standard"},
        {"requests_per_hour": 999},
        {"allowed_models": ["fake-model", "other"]},
        {"expires_at": "90d"},
    ]

    async def apply(change: dict[str, Any]) -> None:
        async with gateway.admin() as admin:
            await admin.update_key(created["id"], change)

    await asyncio.gather(*(apply(c) for c in changes))
    async with gateway.admin() as admin:
        final = await admin.get_key(created["id"])
    assert final["tier"] == "standard"
    assert final["requests_per_hour"] == 999
    assert final["allowed_models"] == ["fake-model", "other"]
    assert final["expires_at"] is not None
    assert final["description"].startswith("note ")
    # The in-memory table saw the last committed state, not an older one.
    in_memory = gateway.app[KEYS].authenticate(created["key"], 0)
    assert (in_memory.tier, in_memory.requests_per_hour) == ("standard", 999)
    assert in_memory.description == final["description"]
    resp = await chat(http, gateway, created["key"])
    assert resp.headers["X-RateLimit-Limit-Hour"] == "999"
    audit = await gateway.rows(
        "SELECT action FROM audit_log WHERE target = ? ORDER BY id", f"key:{created['id']}"
    )
    assert [r["action"] for r in audit] == ["key.create"] + ["key.update"] * len(changes)
