"""The files holding admin password hashes and the ledger are the gateway user's alone.

Outside systemd (a shell, a container, a developer's machine) the umask is usually
0022, which would leave the database, its -wal and -shm, the log and a backup readable
by every local user. The gateway creates them 0600 in a 0700 directory whatever the
umask, and says at start when an existing database is open to others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from llmgw.config import DatabaseSettings, LoggingSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.logs import configure_logging

from ..conftest import GatewayFactory, Served, run_llmgw


@contextlib.contextmanager
def permissive_umask() -> Iterator[None]:
    """The umask of a login shell: new files 0644, directories 0755 unless made otherwise.
    Subprocesses started meanwhile inherit it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def database_files(database: Path) -> dict[str, int]:
    return {p.name: mode(p) for p in database.parent.glob(database.name + "*")}


def served_with(root: Path, fake_url: str, database: Path, extra_config: str = "") -> Served:
    """A `Served` whose database is at `database` rather than in `root`."""
    served = Served(root, fake_url, extra_config)
    served.config.write_text(
        served.config.read_text().replace(f'path = "{served.database}"', f'path = "{database}"')
    )
    served.database = database
    return served


async def stop(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert await served.process.wait() == 0


async def test_serve_creates_the_database_log_and_backups_private(
    tmp_path: Path, fake: FakeVLLM
) -> None:
    database = tmp_path / "state" / "llmgw.db"
    log = tmp_path / "logs" / "llmgw.log"
    served = served_with(tmp_path, fake.url, database, f'[logging]\nfile = "{log}"\n')
    backup = tmp_path / "backup.db"
    try:
        with permissive_umask():
            await served.start()
            socket = ("--socket", str(served.socket))
            added = await run_llmgw(*socket, "key", "add", "--user", "alice")  # a write
            assert added.code == 0, added.stderr
            backed_up = await run_llmgw(*socket, "db", "backup", str(backup))
            assert backed_up.code == 0, backed_up.stderr
        assert mode(database.parent) == 0o700
        assert database_files(database) == {
            "llmgw.db": 0o600,
            "llmgw.db-wal": 0o600,
            "llmgw.db-shm": 0o600,
        }
        assert (mode(log.parent), mode(log)) == (0o700, 0o600)
        assert mode(backup) == 0o600
    finally:
        await served.stop()


async def test_serve_warns_of_a_database_others_can_read(tmp_path: Path, fake: FakeVLLM) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # whatever the test's umask
    database = state / "llmgw.db"
    sqlite3.connect(database).close()
    database.chmod(0o644)
    served = served_with(tmp_path, fake.url, database)
    try:
        await served.start()
        await stop(served)
    finally:
        await served.stop()
    said = served.log.read_text()
    warnings = [line for line in said.splitlines() if " WARNING " in line]
    assert any(str(database) in w and f"chmod 600 {database}" in w for w in warnings), said
    assert any(f"chmod 700 {state}" in w for w in warnings), said
    assert mode(database) == 0o644, "a warning, not a change behind the operator's back"


async def test_a_private_database_gives_no_warning(tmp_path: Path, fake: FakeVLLM) -> None:
    served = Served(tmp_path, fake.url)
    try:
        await served.start()
        await stop(served)
        await served.start()  # now on an existing database
        await stop(served)
    finally:
        await served.stop()
    assert " WARNING " not in served.log.read_text()


async def test_an_embedded_gateway_creates_its_database_private(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    """Without `llmgw serve`'s umask: the store itself creates with explicit modes."""
    database = tmp_path / "new" / "llmgw.db"
    with permissive_umask():
        gateway = await gateway_factory(
            database=DatabaseSettings(path=str(database), flush_interval=0.01)
        )
        await gateway.create_key("alice")
    assert mode(database.parent) == 0o700
    assert database_files(database) == {
        "llmgw.db": 0o600,
        "llmgw.db-wal": 0o600,
        "llmgw.db-shm": 0o600,
    }


def test_the_log_file_is_created_private(tmp_path: Path) -> None:
    log = tmp_path / "llmgw.log"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with permissive_umask():
            configure_logging(LoggingSettings(file=str(log)))
            logging.getLogger("llmgw").warning("a line")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "a line" in log.read_text()
    assert mode(log) == 0o600
