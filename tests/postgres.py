"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory, a
server on a free loopback port, a database per test, stopped and removed at the end.

PostgreSQL refuses to run as root: as root (CI), every server command runs as the
`postgres` user, in a directory that user owns. Missing binaries or a cluster that will
not start fail the run, saying what to install: the suite never skips the PostgreSQL
half of its tests.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg

INSTALL_HINT = (
    "the tests need PostgreSQL's server binaries (initdb, pg_ctl) on PATH or in "
    "/usr/lib/postgresql/*/bin: run scripts/test (it installs them), or "
    "`apt-get install postgresql`"
)
SERVER_USER = "postgres"  # the user the server runs as when the tests run as root


class PostgresMissing(RuntimeError):
    """No PostgreSQL to run, or it would not start; the message says what to do."""


def find_binary(name: str) -> str:
    """`name` on PATH, else in the newest /usr/lib/postgresql/*/bin (Debian keeps the
    server's binaries off PATH)."""
    if found := shutil.which(name):
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise PostgresMissing(f"{name} not found: {INSTALL_HINT}")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL server of the test session's own."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="llmgw-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresMissing(f"no {SERVER_USER!r} user: {INSTALL_HINT}") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.user = SERVER_USER if self._as_root else pwd.getpwuid(os.geteuid()).pw_name

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *args] if self._as_root else list(args)

    def create(self) -> None:
        self._run(
            self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user,
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip

    def _start_args(self) -> list[str]:
        # fsync off: a test cluster need not survive a power cut, and is much faster.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        return self._command(
            self.pg_ctl, "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", options,
        )  # fmt: skip

    def _stop_args(self) -> list[str]:
        return self._command(self.pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w")

    def start(self) -> None:
        try:
            self._run(*self._start_args(), command=True)
        except PostgresMissing as exc:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise PostgresMissing(f"{exc}\n{log}") from None

    def stop(self) -> None:
        self._run(*self._stop_args(), command=True)

    async def start_async(self) -> None:
        """Start the server again from a test running an event loop (no blocking)."""
        await self._run_async(self._start_args())

    async def stop_async(self) -> None:
        """`pg_ctl stop -m fast`: sessions are cut off, as when the database goes away."""
        await self._run_async(self._stop_args())

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._stop_args(), capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *args: str, command: bool = False) -> None:
        argv = list(args) if command else self._command(*args)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresMissing(
                f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}"
            )

    async def _run_async(self, argv: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed: {out.decode(errors='replace')}")

    async def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        admin = await asyncpg.connect(self.url())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.url())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def start_cluster() -> Cluster:
    """A running cluster, or `PostgresMissing` saying why not."""
    cluster = Cluster()
    try:
        cluster.create()
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
