"""The database file is deleted while the gateway serves (`rm llmgw.db*` by mistake).

The gateway still has the deleted file open, so nothing is lost yet, but whatever it
wrote there would be gone at the next start. It notices before its next write: `/health`
says so and what to do, admin changes are refused, usage records wait in memory. Once
`llmgw db backup PATH` has written what the gateway holds back to the path (or a
database is put there), it reopens the file and writes the records; a SIGTERM while the
file is still missing writes it back first.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.admin_client import AdminApiError
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import LEDGER

from ..conftest import Gateway, Served, auth, post, read_rows, run_llmgw, wait_for
from .conftest import assert_settled

CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)


FILES = ("llmgw.db", "llmgw.db-shm", "llmgw.db-wal")


def database_files(database: Path) -> list[str]:
    return sorted(p.name for p in database.parent.glob(database.name + "*"))


def delete(database: Path, names: tuple[str, ...] = FILES) -> None:
    """What `rm llmgw.db*` does (or `rm llmgw.db`, or `rm llmgw.db-wal`)."""
    assert database.name == "llmgw.db"
    for name in names:
        (database.parent / name).unlink()


async def serve_requests(url: str, key: str, count: int) -> list[str]:
    """`count` chat completions through the gateway at `url`; their request ids."""
    ids = []
    for _ in range(count):
        status, headers, _ = await post(
            f"{url}/v1/chat/completions", CHAT, auth(key) | {"Content-Type": "application/json"}
        )
        assert status == 200
        ids.append(headers["x-request-id"])
    return ids


async def health(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
        assert resp.status == 200  # degraded, but serving: the keys are in memory
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.parametrize(
    ("deleted", "said"),
    [
        (FILES, "llmgw.db was deleted"),
        (("llmgw.db",), "llmgw.db was deleted"),
        (("llmgw.db-wal",), "write-ahead log {database}-wal was deleted"),
    ],
    ids=["all", "database", "wal"],
)
async def test_a_deleted_database_is_noticed_held_and_written_back(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, deleted: tuple[str, ...], said: str
) -> None:
    database = gateway.settings.database_path
    said = said.format(database=database)
    socket = ("--socket", str(gateway.socket_path))
    alice = await gateway.create_key("alice", tier="premium")
    before = await serve_requests(gateway.url, alice["key"], 3)
    await gateway.flush_ledger()
    ledger = gateway.app[LEDGER]

    with caplog.at_level(logging.WARNING, logger="llmgw"):
        assert database_files(database) == list(FILES)
        delete(database, deleted)
        left = database_files(database)
        report = await health(gateway.url)
        assert report["status"] == "degraded"
        error = report["database"]["error"]
        assert said in error and f"llmgw db backup {database}" in error

        refused = await run_llmgw(*socket, "key", "add", "--user", "bob")
        assert refused.code == 1
        assert said in refused.stderr and f"llmgw db backup {database}" in refused.stderr
        async with gateway.admin() as admin:
            with pytest.raises(AdminApiError) as caught:
                await admin.create_key("bob")
            assert caught.value.status == 503
            with pytest.raises(AdminApiError) as caught:
                await admin.usage()
            assert caught.value.status == 503
            assert said in caught.value.message

        during = await serve_requests(gateway.url, alice["key"], 5)  # still served
        await wait_for(lambda: ledger.failed_writes > 0)
        assert ledger.pending == 5
        assert database_files(database) == left, "nothing made at the path meanwhile"

        backed_up = await run_llmgw(*socket, "db", "backup", str(database))
        assert backed_up.code == 0, backed_up.stderr
        rows = await assert_settled(gateway, rows=8)
        assert (await health(gateway.url))["status"] == "ok"
        bob = await gateway.create_key("bob")  # admin changes work again

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "said once, not at every write"
    assert said in errors[0].getMessage()
    assert any(
        f"reopened {database}" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
    assert sorted(r["request_id"] for r in rows) == sorted(before + during)
    keys = read_rows(database, "SELECT id, user_id FROM api_keys ORDER BY id")
    assert keys == [{"id": alice["id"], "user_id": "alice"}, {"id": bob["id"], "user_id": "bob"}]


async def test_a_backup_put_in_place_of_a_deleted_database_is_opened(
    gateway: Gateway, tmp_path: Path
) -> None:
    database = gateway.settings.database_path
    socket = ("--socket", str(gateway.socket_path))
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    kept = await serve_requests(gateway.url, key, 3)
    await gateway.flush_ledger()
    backup = tmp_path / "earlier.db"
    backed_up = await run_llmgw(*socket, "db", "backup", str(backup))
    assert backed_up.code == 0, backed_up.stderr
    await serve_requests(gateway.url, key, 2)  # in the database only: lost with it
    await gateway.flush_ledger()

    delete(database, ("llmgw.db",))  # its -wal stays, with the two rows in it
    held = await serve_requests(gateway.url, key, 4)
    backup.replace(database)
    rows = await assert_settled(gateway, rows=7)
    # The backup and what the gateway held since: nothing of the deleted file's -wal,
    # which must not be taken for the backup's.
    assert sorted(r["request_id"] for r in rows) == sorted(kept + held)
    assert read_rows(database, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]


async def test_sigterm_writes_a_deleted_database_back(tmp_path: Path, fake: FakeVLLM) -> None:
    served = Served(tmp_path, fake.url)
    await served.start()
    try:
        added = await run_llmgw(
            "--socket", str(served.socket), "key", "add", "--user", "alice", "--json"
        )
        assert added.code == 0, added.stderr
        key = json.loads(added.stdout)
        answered = await serve_requests(served.url, key["key"], 3)
        delete(served.database)
        answered += await serve_requests(served.url, key["key"], 4)
        assert (await health(served.url))["status"] == "degraded"
        served.process.send_signal(signal.SIGTERM)
        assert await served.process.wait() == 0
    finally:
        await served.stop()

    log = served.log.read_text()
    assert served.database.exists(), log
    assert "Traceback" not in log
    assert "7 records written, 0 dropped" in log
    rows = read_rows(served.database, "SELECT request_id FROM request_logs")
    assert sorted(r["request_id"] for r in rows) == sorted(answered)
    keys = read_rows(served.database, "SELECT id FROM api_keys")
    assert keys == [{"id": key["id"]}]
