"""The database goes away for a while, locked by another process or its disk full.

Requests go on being served (keys are in memory), usage records wait in the ledger's
bounded buffer and are written once the database is back. Should the buffer fill, what
is lost is counted, logged, and shown in `/health` and in the TUI: never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from textual.widgets import Static

from llmgw.config import DatabaseSettings, load_settings
from llmgw.state import LEDGER
from tui.app import LlmgwTui
from tui.dashboard import DashboardPane

from ..conftest import Gateway, GatewayFactory, auth, post, read_rows, wait_for
from .conftest import assert_settled

CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)
REQUESTS = 20


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's write lock on the database, as a long migration or a
    `sqlite3` shell left in a transaction would hold it."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def serve_requests(gateway: Gateway, key: str, count: int) -> None:
    url = f"{gateway.base_url}/chat/completions"
    headers = auth(key) | {"Content-Type": "application/json"}
    for _ in range(count):
        status, _, _ = await post(url, CHAT, headers)
        assert status == 200


async def health(gateway: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/health") as resp:
        assert resp.status == 200  # degraded, but serving
        body: dict[str, Any] = await resp.json()
        return body


async def until_a_write_failed(gateway: Gateway) -> None:
    ledger = gateway.app[LEDGER]
    # The database waits 5 s for a lock before it gives up.
    await wait_for(lambda: ledger.failed_writes > 0, seconds=15)


async def test_a_locked_database_delays_the_ledger_and_loses_nothing(
    gateway: Gateway, api_key: str
) -> None:
    with locked(gateway.settings.database_path):
        await serve_requests(gateway, api_key, REQUESTS)
        await until_a_write_failed(gateway)
        await serve_requests(gateway, api_key, REQUESTS)
        report = await health(gateway)
        assert report["status"] == "degraded"
        assert report["ledger"]["pending"] == 2 * REQUESTS
        assert "locked" in report["ledger"]["last_error"]
    rows = await assert_settled(gateway, rows=2 * REQUESTS)
    assert {r["status_code"] for r in rows} == {200}
    assert (await health(gateway))["status"] == "ok"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system of its own, so the test can fill it up (a tmpfs: needs root,
    as in CI)."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full case mounts a small tmpfs: run the suite as root (CI does)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; the file that did it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):  # ENOSPC
        while True:
            out.write(b"\0" * 4096)
    return filler


async def test_a_full_disk_delays_the_ledger_and_loses_nothing(
    small_disk: Path, gateway_factory: GatewayFactory
) -> None:
    database = small_disk / "llmgw.db"
    gateway = await gateway_factory(
        database=DatabaseSettings(path=str(database), flush_interval=0.01)
    )
    key = (await gateway.create_key(tier="premium"))["key"]
    await serve_requests(gateway, key, 2)
    await gateway.flush_ledger()
    filler = fill(small_disk)
    await serve_requests(gateway, key, REQUESTS)
    await until_a_write_failed(gateway)
    report = await health(gateway)
    assert report["status"] == "degraded"
    assert "full" in report["ledger"]["last_error"]
    assert report["ledger"]["pending"] == REQUESTS
    filler.unlink()
    rows = await assert_settled(gateway, rows=2 + REQUESTS)
    assert {r["status_code"] for r in rows} == {200}
    assert read_rows(database, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]


async def test_a_full_buffer_is_counted_logged_and_shown(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_factory(
        database=dataclasses.replace(
            load_settings(None).database, flush_interval=0.01, max_pending=5
        )
    )
    database = gateway.settings.database_path
    key = (await gateway.create_key(tier="premium"))["key"]
    ledger = gateway.app[LEDGER]
    app = LlmgwTui(gateway.socket_path)
    with caplog.at_level(logging.ERROR, logger="llmgw.ledger"):
        async with app.run_test(size=(100, 30)) as pilot:
            with locked(database):
                await serve_requests(gateway, key, REQUESTS)
                assert ledger.dropped > 0  # counted as it happens
                report = await health(gateway)
                assert report["status"] == "degraded"
                assert report["ledger"]["dropped"] == ledger.dropped
                line = app.query_one(DashboardPane).query_one("#ledger", Static)
                async with asyncio.timeout(10):  # the stats tick once a second
                    while f"{ledger.dropped:,} dropped" not in str(line.render()):
                        await pilot.pause(0.1)
                assert line.display
    assert "ledger buffer full" in caplog.text
    await gateway.flush_ledger()
    rows = read_rows(database, "SELECT status_code FROM request_logs")
    # Nothing vanished unaccounted: every request is either a row or a counted drop.
    assert len(rows) + ledger.dropped == REQUESTS
    assert len(rows) >= 5
