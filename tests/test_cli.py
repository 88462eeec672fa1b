"""`llmgw`, the admin's command line, run as a real program against a real gateway.

The gateway lives in this test's event loop, so the CLI runs in a subprocess started
with `asyncio.create_subprocess_exec`. stdout is data (scripts parse it), stderr is
talk; exit codes are 0 ok, 1 error, 2 usage, 3 gateway not reachable.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import click
import orjson
import pytest

from cli.main import cli
from cli.state import OPTION_FOR_FIELD

from .conftest import CliRun, Gateway, post_chat, run_llmgw

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def llmgw(*args: str, env: dict[str, str] | None = None) -> CliRun:
    return await run_llmgw(*args, env=env)


async def chat_status(http: aiohttp.ClientSession, gateway: Gateway, key: str, **body: Any) -> int:
    return await post_chat(http, gateway, key, CHAT | body)


def no_traceback(run: CliRun) -> None:
    assert "Traceback" not in run.stderr
    assert "Traceback" not in run.stdout


# --- keys against a running gateway ------------------------------------------------------


async def test_key_add_json_gives_a_working_key(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    run = await llmgw(
        "--socket", str(gateway.socket_path), "key", "add", "--user", "bob", "--tier", "premium",
        "--description", "laptop", "--json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    created = orjson.loads(run.stdout)  # the whole of stdout is one JSON document
    assert isinstance(created, dict)
    assert created["key"].startswith("sk-internal-")
    assert created["user_id"] == "bob"
    assert created["tier"] == "premium"
    assert created["description"] == "laptop"
    assert isinstance(created["id"], int)
    assert "key_hash" not in created

    assert await chat_status(http, gateway, created["key"]) == 200
    rows = await gateway.ledger_rows()
    assert [(r["user_id"], r["api_key_id"], r["status_code"]) for r in rows] == [
        ("bob", created["id"], 200)
    ]


async def test_key_add_prints_only_the_key_on_stdout(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    # The socket comes from LLMGW_ADMIN_SOCKET, which the autouse fixture points at it.
    assert os.environ["LLMGW_ADMIN_SOCKET"] == str(gateway.socket_path)
    run = await llmgw("key", "add", "--user", "carol")
    assert run.code == 0, run.stderr
    assert re.fullmatch(r"sk-internal-[A-Za-z0-9_-]+\n", run.stdout), run.stdout
    key = run.stdout.strip()
    assert run.stderr.strip(), "the notice about storing the key belongs on stderr"
    assert await chat_status(http, gateway, key) == 200


async def test_key_add_with_expiry_and_model(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    run = await llmgw(
        "key", "add", "--user", "dave", "--expires", "30d", "--model", "fake-model",
        "--model", "other-model", "--json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    created = orjson.loads(run.stdout)
    assert created["expires_at"]
    assert created["allowed_models"] == ["fake-model", "other-model"]
    assert await chat_status(http, gateway, created["key"]) == 200
    assert await chat_status(http, gateway, created["key"], model="third-model") == 403


async def test_key_list_json_shows_keys_without_secrets(gateway: Gateway) -> None:
    first = orjson.loads((await llmgw("key", "add", "--user", "erin", "--json")).stdout)
    second = orjson.loads((await llmgw("key", "add", "--user", "frank", "--json")).stdout)

    run = await llmgw("key", "list", "--json")
    assert run.code == 0, run.stderr
    listed = orjson.loads(run.stdout)
    assert [(k["id"], k["user_id"]) for k in listed] == [
        (first["id"], "erin"),
        (second["id"], "frank"),
    ]
    for entry in listed:
        assert "key" not in entry
        assert "key_hash" not in entry
    for created in (first, second):
        assert created["key"] not in run.stdout
        assert created["key"][len("sk-internal-") :] not in run.stdout


async def test_key_list_table_shows_prefixes_not_keys(gateway: Gateway) -> None:
    created = orjson.loads((await llmgw("key", "add", "--user", "gina", "--json")).stdout)
    run = await llmgw("key", "list")
    assert run.code == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    assert "ID" in header
    assert "USER" in header
    assert len(rows) == 1
    assert created["key_prefix"] in rows[0]
    assert "gina" in rows[0]
    assert created["key"] not in run.stdout


async def test_key_list_with_no_keys_prints_the_header_only(gateway: Gateway) -> None:
    table = await llmgw("key", "list")
    as_json = await llmgw("key", "list", "--json")
    assert (table.code, as_json.code) == (0, 0)
    assert table.stdout.splitlines() == [
        "ID  PREFIX  USER  TIER  ACTIVE  EXPIRES  LAST USED  DESCRIPTION"
    ]
    assert orjson.loads(as_json.stdout) == []
    assert "Traceback" not in table.stderr


async def test_key_revoke_refuses_the_next_request(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = orjson.loads((await llmgw("key", "add", "--user", "hank", "--json")).stdout)
    assert await chat_status(http, gateway, created["key"]) == 200

    run = await llmgw("key", "revoke", str(created["id"]), "--json")
    assert run.code == 0, run.stderr
    revoked = orjson.loads(run.stdout)
    assert revoked["id"] == created["id"]
    assert revoked["is_active"] is False
    assert "key" not in revoked

    async with http.post(
        f"{gateway.base_url}/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {created['key']}"},
    ) as resp:
        assert resp.status == 401
        assert "revoked" in (await resp.json())["error"]["message"]

    listed = orjson.loads((await llmgw("key", "list", "--json")).stdout)
    assert [k["is_active"] for k in listed] == [False]


async def test_key_revoke_without_json_talks_on_stderr(gateway: Gateway) -> None:
    created = await gateway.create_key("ivan")
    run = await llmgw("key", "revoke", str(created["id"]))
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    assert str(created["id"]) in run.stderr


async def test_unknown_tier_exits_2_naming_the_option_and_the_tiers(gateway: Gateway) -> None:
    run = await llmgw("key", "add", "--user", "judy", "--tier", "gold")
    assert run.code == 2
    assert run.stdout == ""
    assert "--tier" in run.stderr
    assert "gold" in run.stderr
    for tier in ("free", "standard", "premium"):
        assert tier in run.stderr
    no_traceback(run)
    async with gateway.admin() as admin:
        assert await admin.list_keys() == []


@pytest.mark.parametrize("expires", ["2001-01-01", "next tuesday"])
async def test_bad_expiry_exits_2_naming_the_option(gateway: Gateway, expires: str) -> None:
    run = await llmgw("key", "add", "--user", "kim", "--expires", expires)
    assert run.code == 2
    assert run.stdout == ""
    assert "--expires" in run.stderr
    assert ("past" if expires.startswith("2001") else "cannot read expiry") in run.stderr
    no_traceback(run)


# Every command that sends the gateway values, each with one that is refused (by the
# gateway, or by click before it): the message names the flag, never the API's field.
REFUSED = [
    (["key", "add", "--user", ""], "--user", "user_id"),
    (["key", "add", "--user", "x", "--tier", "gold"], "--tier", "tier"),
    (["key", "add", "--user", "x", "--expires", "2001-01-01"], "--expires", "expires_at"),
    (["key", "add", "--user", "x", "--model", ""], "--model", "allowed_models"),
    (["key", "add", "--user", "x", "--rpm", "0"], "--rpm", "requests_per_minute"),
    (["key", "add", "--user", "x", "--rph", "0"], "--rph", "requests_per_hour"),
    (["key", "update", "ID", "--tier", "gold"], "--tier", "tier"),
    (["key", "update", "ID", "--expires", "someday"], "--expires", "expires_at"),
    (["key", "update", "ID", "--model", ""], "--model", "allowed_models"),
    (["key", "update", "ID", "--rpm", "0"], "--rpm", "requests_per_minute"),
    (["key", "update", "ID", "--rph", "-1"], "--rph", "requests_per_hour"),
    (["admin", "add", "no spaces", "--password-stdin"], "USERNAME", "username"),
    (["admin", "add", "ops", "--password-stdin"], "The password", "password"),
    (["admin", "passwd", "ops", "--password-stdin"], "The password", "password"),
    (["usage", "--days", "0"], "--days", "days"),
    (["usage", "--by", "tier"], "--by", "by"),
    (["db", "prune", "--older-than", "0"], "--older-than", "older_than_days"),
    (["audit", "--limit", "0"], "--limit", "limit"),
]


@pytest.mark.parametrize(
    ("args", "option", "field"), REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED]
)
async def test_a_refused_value_names_the_flag_not_the_api_field(
    gateway: Gateway, args: list[str], option: str, field: str
) -> None:
    created = await gateway.create_key("kim")
    args = [str(created["id"]) if a == "ID" else a for a in args]
    run = await run_llmgw(*args, stdin="short\n")  # a password too weak for the gateway
    assert run.code == 2, run.stderr
    assert run.stdout == ""
    assert option in run.stderr
    assert f"'{field}'" not in run.stderr
    assert "null" not in run.stderr  # the API's word: the CLI says never, tier, --model
    no_traceback(run)


async def test_key_add_takes_expires_never_as_the_error_suggests(gateway: Gateway) -> None:
    run = await llmgw("key", "add", "--user", "kim", "--expires", "never", "--json")
    assert run.code == 0, run.stderr
    assert orjson.loads(run.stdout)["expires_at"] is None


def test_every_flag_the_gateway_may_be_told_of_exists() -> None:
    options = {o for _, c in COMMANDS for p in c.params for o in (*p.opts, *p.secondary_opts)}
    arguments = {p.human_readable_name for _, command in COMMANDS for p in command.params}
    for field, option in OPTION_FOR_FIELD.items():
        flags = option.split("/") if option.startswith("--") else []
        assert all(f in options for f in flags) or option in arguments or " " in option, field


async def test_revoking_an_unknown_key_exits_1(gateway: Gateway) -> None:
    run = await llmgw("key", "revoke", "99999")
    assert run.code == 1
    assert run.stdout == ""
    assert "99999" in run.stderr
    no_traceback(run)


# --- no gateway, bad usage -----------------------------------------------------------------


@pytest.mark.parametrize("command", [["key", "list"], ["key", "add", "--user", "x"]])
async def test_no_gateway_exits_3_and_says_how_to_start_one(
    tmp_path: Path, command: list[str]
) -> None:
    socket_path = tmp_path / "nothing-here.sock"
    run = await llmgw("--socket", str(socket_path), *command)
    assert run.code == 3
    assert run.stdout == ""
    assert "llmgw serve" in run.stderr
    assert str(socket_path) in run.stderr
    no_traceback(run)


async def test_stale_socket_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    run = await llmgw("--socket", str(path), "key", "list")
    assert run.code == 3
    assert "llmgw serve" in run.stderr
    no_traceback(run)


async def test_gateway_stopped_exits_3(gateway: Gateway) -> None:
    await gateway.runner.cleanup()
    run = await llmgw("key", "list", "--json")
    assert run.code == 3
    assert run.stdout == ""
    no_traceback(run)


@pytest.mark.parametrize(
    "args",
    [
        ["key", "add", "--bogus"],
        ["key", "add"],  # --user is required
        ["key", "revoke", "not-a-number"],
        ["key", "revoke"],
        ["key", "frobnicate"],
        ["nonsense"],
        ["--no-such-option", "key", "list"],
        ["serve", "--log-format", "xml"],
        ["serve", "--port", "eighty"],
    ],
)
async def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    run = await llmgw("--socket", str(tmp_path / "none.sock"), *args)
    assert run.code == 2, run.stderr
    assert run.stdout == ""
    assert "Usage:" in run.stderr
    no_traceback(run)


# --- help ------------------------------------------------------------------------------------


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path) or "llmgw", command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))


def test_the_walk_finds_the_commands() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"llmgw", "key", "key add", "key list", "key revoke", "serve"} <= names


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`{name}` has no help text"
    assert command.get_short_help_str().strip(), f"`{name}` has no short help"
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"`{name} {param.opts[0]}` has no help"


async def test_help_documents_the_exit_codes() -> None:
    run = await llmgw("--help")
    assert run.code == 0
    text = " ".join(run.stdout.split()).lower()
    assert re.search(r"\b0\b[^,;.]*\bok\b", text), text
    assert re.search(r"\b1\b[^,;.]*\berror\b", text), text
    assert re.search(r"\b2\b[^,;.]*\busage\b", text), text
    assert re.search(r"\b3\b[^,;.]*\b(not reachable|unreachable)\b", text), text


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
async def test_help_works_for_every_command(name: str, command: click.Command) -> None:
    args = [] if name == "llmgw" else name.split()
    run = await llmgw(*args, "--help")
    assert run.code == 0, run.stderr
    assert "Usage:" in run.stdout
    assert (command.get_short_help_str() or "").split()[0] in run.stdout
