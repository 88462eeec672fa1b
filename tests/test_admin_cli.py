"""`llmgw admin`, `audit`, `db` and the remote `--url/--token` CLI, as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from llmgw.ledger import UsageRecord
from llmgw.state import STORE

from .conftest import LLMGW, CliRun, Gateway, GatewayFactory, read_rows, run_llmgw, with_secret

PASSWORD = "correct horse battery staple"


async def cli(
    gateway: Gateway | None, *args: str, stdin: str | None = None, remote: bool = False
) -> CliRun:
    where = [] if remote or gateway is None else ["--socket", str(gateway.socket_path)]
    return await run_llmgw(*where, *args, stdin=stdin)


async def ok_json(gateway: Gateway | None, *args: str, stdin: str | None = None) -> Any:
    code, out, err = await cli(gateway, *args, "--json", stdin=stdin)
    assert code == 0, err
    return json.loads(out)


async def test_admin_users_lifecycle(gateway: Gateway) -> None:
    added = await ok_json(
        gateway, "admin", "add", "ops", "--email", "ops@example.com", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added["username"] == "ops"
    assert "hashed_password" not in added
    code, _, err = await cli(gateway, "admin", "add", "ops", "--password-stdin", stdin=PASSWORD)
    assert code == 1
    assert "exists already" in err
    code, _, err = await cli(gateway, "admin", "add", "weak", "--password-stdin", stdin="short")
    assert code == 2
    assert "at least 12 characters" in err
    code, _, err = await cli(gateway, "admin", "add", "nostdin")
    assert code == 2
    assert "--password-stdin" in err  # no terminal to prompt on

    code, _, err = await cli(gateway, "admin", "passwd", "ops", "--password-stdin", stdin="x" * 14)
    assert code == 0, err
    code, _, err = await cli(gateway, "admin", "disable", "ops")
    assert code == 0, err
    [listed] = await ok_json(gateway, "admin", "list")
    assert (listed["username"], listed["is_active"]) == ("ops", False)
    code, _, _ = await cli(gateway, "admin", "enable", "ops")
    assert code == 0
    code, _, err = await cli(gateway, "admin", "disable", "nobody")
    assert code == 1
    assert "No admin user named 'nobody'" in err

    stored = read_rows(gateway.settings.database_path, "SELECT hashed_password FROM admin_users")
    assert stored[0]["hashed_password"].startswith("$argon2")
    assert PASSWORD not in json.dumps(await ok_json(gateway, "audit"))


async def test_remote_cli_with_url_and_token(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(admin=with_secret("s" * 32))
    await cli(gateway, "admin", "add", "ops", "--password-stdin", stdin=PASSWORD)
    code, out, err = await cli(
        None, "--url", gateway.url, "admin", "login", "ops", "--password-stdin", stdin=PASSWORD
    )
    assert code == 0, err
    token = out.strip()
    assert token.count(".") == 2
    assert "LLMGW_TOKEN" in err

    remote = ("--url", gateway.url, "--token", token)
    created = await ok_json(None, *remote, "key", "add", "--user", "remote-user")
    assert created["key"].startswith("sk-internal-")
    listed = await ok_json(None, *remote, "key", "list")
    assert [k["user_id"] for k in listed] == ["remote-user"]
    [entry] = await ok_json(None, *remote, "audit", "--action", "key.")
    assert (entry["actor"], entry["action"]) == ("admin:ops", "key.create")
    assert entry["door"].startswith("remote:")

    code, _, err = await cli(None, "--url", gateway.url, "key", "list")
    assert code == 1
    assert "Log in first" in err
    code, _, err = await cli(None, "--url", gateway.url, "--token", "nonsense", "key", "list")
    assert code == 1
    assert "not valid" in err
    code, _, err = await cli(None, "--url", "http://127.0.0.1:9", "key", "list")
    assert code == 3
    code, _, err = await cli(gateway, "admin", "login", "ops", "--password-stdin", stdin=PASSWORD)
    assert code == 2
    assert "--url" in err


async def test_audit_lists_changes_newest_first_without_secrets(gateway: Gateway) -> None:
    created = await gateway.create_key("ivy", tier="free")
    async with gateway.admin() as admin:
        rotated = await admin.rotate_key(created["id"])
        await admin.update_key(created["id"], {"tier": "premium"})
        await admin.revoke_key(created["id"])
    entries = await ok_json(gateway, "audit")
    assert [e["action"] for e in entries] == [
        "key.revoke",
        "key.update",
        "key.rotate",
        "key.create",
    ]
    assert all(e["door"] == "socket" and e["actor"].startswith("uid:") for e in entries)
    update = entries[1]
    assert (update["before"]["tier"], update["after"]["tier"]) == ("free", "premium")
    text = json.dumps(entries)
    for secret in (created["key"], rotated["key"]):
        assert secret not in text
    assert "key_hash" not in text
    code, out, _ = await cli(gateway, "audit", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3  # header and two entries
    assert 'tier: "free" -> "premium"' in lines[2]
    only_rotate = await ok_json(gateway, "audit", "--action", "key.rotate")
    assert [e["action"] for e in only_rotate] == ["key.rotate"]


async def test_audit_shows_values_as_json_spells_them(gateway: Gateway) -> None:
    created = await gateway.create_key("ivy")
    async with gateway.admin() as admin:
        await admin.update_key(created["id"], {"is_active": False})
        await admin.update_key(created["id"], {"allowed_models": ["a", "b"]})
        await admin.update_key(created["id"], {"description": "null\x1b[2J"})
        await admin.revoke_key(created["id"])  # already revoked: nothing changes
    code, out, _ = await cli(gateway, "audit", "--limit", "4")
    assert code == 0
    revoke, description, models, disable = out.splitlines()[1:]
    assert disable.endswith("is_active: true -> false")
    assert models.endswith('allowed_models: null -> ["a", "b"]')
    assert description.endswith('description: "" -> "null\\u001b[2J"')
    assert "\x1b" not in out
    assert revoke.endswith("no change")


async def test_backup_while_serving_and_prune(gateway: Gateway, tmp_path: Path) -> None:
    created = await gateway.create_key("jo")
    now = time.time()
    old = [
        UsageRecord(f"old-{i}", "jo", created["id"], "/v1/chat/completions", "POST", 200,
                    10.0, 5.0, 3, 4, "reported", "fake-model", None, now - 100 * 86400)
        for i in range(25)
    ]  # fmt: skip
    recent = [
        UsageRecord(f"new-{i}", "jo", created["id"], "/v1/chat/completions", "POST", 200,
                    10.0, 5.0, 3, 4, "reported", "fake-model", None, now - 3600)
        for i in range(5)
    ]  # fmt: skip
    await gateway.app[STORE].insert_request_logs(old + recent)

    target = tmp_path / "backups" / "llmgw-backup.db"
    target.parent.mkdir()
    result = await ok_json(gateway, "db", "backup", str(target))
    assert result["bytes"] == target.stat().st_size > 0
    with contextlib.closing(sqlite3.connect(target)) as copy, copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT count(*) FROM request_logs").fetchone()[0] == 30
        assert copy.execute("SELECT user_id FROM api_keys").fetchall() == [("jo",)]
    assert not list(gateway.settings.database_path.parent.glob(".llmgw-backup-*"))

    pruned = await ok_json(gateway, "db", "prune", "--older-than", "90d")
    assert pruned["deleted"] == 25
    rows = read_rows(gateway.settings.database_path, "SELECT request_id FROM request_logs")
    assert sorted(r["request_id"] for r in rows) == [f"new-{i}" for i in range(5)]
    [entry] = await ok_json(gateway, "audit", "--action", "db.")
    assert entry["after"] == {"deleted": 25}
    code, _, err = await cli(gateway, "db", "prune", "--older-than", "soon")
    assert code == 2
    assert "--older-than" in err


async def test_backup_into_a_missing_directory_says_so(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await cli(gateway, "db", "backup", str(tmp_path / "nowhere" / "x.db"))
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert f"There is no directory {tmp_path / 'nowhere'}: create it first" in err
    assert not (tmp_path / "nowhere").exists()


async def test_backup_to_dash_streams_the_database_to_stdout(
    gateway: Gateway, tmp_path: Path
) -> None:
    await gateway.create_key("jo")
    process = await asyncio.create_subprocess_exec(
        LLMGW, "--socket", str(gateway.socket_path), "db", "backup", "-",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert not (tmp_path / "-").exists()
    assert out.startswith(b"SQLite format 3\0")
    assert f"({len(out)} bytes, integrity checked)" in err.decode()
    copy = tmp_path / "copy.db"
    copy.write_bytes(out)
    assert read_rows(copy, "SELECT user_id FROM api_keys") == [{"user_id": "jo"}]

    code, out_text, err_text = await cli(gateway, "db", "backup", "-", "--json")
    assert (code, out_text) == (2, "")
    assert "--json and PATH - both want stdout" in err_text


@pytest.mark.parametrize("command", [["key", "list"], ["audit"], ["admin", "list"]])
async def test_no_gateway_exits_3(command: list[str], tmp_path: Path) -> None:
    code, out, err = await cli(None, "--socket", str(tmp_path / "none.sock"), *command)
    assert code == 3
    assert out == ""
    assert "llmgw serve" in err
