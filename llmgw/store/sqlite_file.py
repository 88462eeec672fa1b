"""The database's connection and its files on disk: created private, watched while open.

The database, its -wal and -shm hold admin password hashes and the usage ledger, so
the directory is made 0700 and the file 0600 whatever the umask (SQLite gives the -wal
and -shm it creates the database file's mode); an existing database others can read
gets a warning.

A file deleted while open stays readable and writable through the open connection, and
vanishes when that closes: everything written there meanwhile would be lost at the next
start. So `Database` remembers which file (device and inode) it opened and, before each
change, checks with a `stat` that the path still names it. If not, changes are refused
(`DatabaseGone`) until a database is at the path again (`llmgw db backup PATH` writes
the open one back there: `Database.backup` works on the open connection), which is then
opened in its place. At shutdown, a database whose path is empty is written back there
first, so that the ledger's last records have a home.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shlex
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from .base import DatabaseGone, StoreError
from .sqlite_migrations import foreign_database, migrate

log = logging.getLogger("llmgw.store")

_FileId = tuple[int, int]  # st_dev, st_ino
Clock = Callable[[], float]


class Database:
    """The connections to the database file (one that writes, under the lock that makes
    changes one at a time, and one that only reads: in WAL mode a reader never waits for
    a writer), replaced when another database is put at the path."""

    def __init__(
        self,
        path: Path,
        connections: tuple[aiosqlite.Connection, aiosqlite.Connection],
        clock: Clock,
    ) -> None:
        self.connection, self.reader = connections
        self.lock = asyncio.Lock()
        self._file = WatchedFile(path)
        self._file.remember()
        self._clock = clock
        self._reported: str | None = None  # the problem logged last: each is logged once

    @property
    def path(self) -> Path:
        return self._file.path

    @classmethod
    async def open(cls, path: Path, clock: Clock) -> Database:
        warn_if_open_to_others(path)
        create_private(path)
        return cls(path, await _connect(path, clock), clock)

    async def close(self) -> None:
        await self.reader.close()
        await self.connection.close()

    async def check(self) -> None:
        """Raise `DatabaseGone` unless the path names the open database file; a database
        put at the path since is opened instead. A `stat` when all is well."""
        if self._file.state() is not PathState.OPEN or self._reported:
            async with self.lock:
                await self.follow_path()

    def problem(self) -> str | None:
        """What is wrong with the file now, by a `stat` alone (no query, no lock)."""
        state = self._file.state()
        if state is PathState.OPEN:
            return None
        return self._reported or self._file.problem(state, "not looked at yet")

    async def follow_path(self) -> None:
        """With the lock held: go on if the path names the open file, open another
        database put there, or raise `DatabaseGone`."""
        state = self._file.state()
        if state is PathState.OPEN:
            if self._reported:
                log.warning("%s is the open database file again", self._file.path)
                self._reported = None
            return
        reason: str | None = None
        if state is PathState.REPLACED:
            reason = await asyncio.to_thread(foreign_database, self._file.path)
            if reason is None:
                await self._reopen()
                return
        problem = self._file.problem(state, reason or "")
        if problem != self._reported:
            log.error("%s", problem)
            self._reported = problem
        raise DatabaseGone(problem)

    async def backup(self) -> Path:
        """A consistent copy of the database in a new file (0600) beside it, made by
        SQLite's online backup API on this connection: it works while the file is
        deleted too. Changes and reads wait meanwhile."""
        async with self.lock:
            copy = await self._backup()
        # Checked once the lock is let go: it reads only the copy.
        problem = await asyncio.to_thread(_integrity_problem, copy)
        if problem is not None:
            copy.unlink()
            raise StoreError(
                f"the backup of {self._file.path} failed its integrity check: {problem}"
            )
        return copy

    async def write_back(self) -> None:
        """Write the open database back to its path if the file (or its -wal) is gone
        from there, and open it there. For shutdown: the ledger's last records are
        written after this."""
        async with self.lock:
            state = self._file.state()
            if state not in (PathState.MISSING, PathState.WAL_MISSING):
                return
            try:
                copy = await self._backup()
                try:
                    os.replace(copy, self._file.path)
                except OSError:
                    copy.unlink(missing_ok=True)
                    raise
                log.warning(
                    "wrote the database the gateway had open back to %s at shutdown (%s)",
                    self._file.path,
                    state.value,
                )
                await self.follow_path()
            except Exception as exc:  # the ledger says what it could not write
                log.error("could not write the database back to %s: %s", self._file.path, exc)

    async def _reopen(self) -> None:
        # The old connection goes first: until it is closed its -wal and -shm are in
        # use, and they must be gone before the new file is opened.
        await self.close()
        self._file.remove_stale_companions()
        self.connection, self.reader = await _connect(self._file.path, self._clock)
        self._file.remember()
        self._reported = None
        log.warning(
            "reopened %s, the database file now at that path: changes are written to it",
            self._file.path,
        )

    async def _backup(self) -> Path:
        directory = self._file.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self._file.path.name}.", dir=directory)
        os.close(fd)
        try:
            # Written in aiosqlite's thread, hence check_same_thread=False.
            with contextlib.closing(sqlite3.connect(name, check_same_thread=False)) as copy:
                await self.connection.backup(copy)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)


def _yield_to_the_loop(connection: aiosqlite.Connection) -> None:
    """Make the connection's thread less urgent than the event loop on their core
    (Linux: a thread's own nice value). The ledger's batches run there; on a core it
    shares with the event loop, a batch of a thousand rows would otherwise keep the loop
    waiting for the scheduler's slice (milliseconds) whenever the loop wakes meanwhile.
    Nice 5, not 19: under a saturated CPU the writer still gets a quarter of the core,
    so the ledger keeps up and a SIGKILL still loses no more than its last interval."""
    thread = getattr(connection, "_thread", None)  # aiosqlite's worker (no public handle)
    native_id = getattr(thread, "native_id", None)
    if native_id is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, native_id, 5)


def _integrity_problem(path: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(path)) as copy:
        result = copy.execute("PRAGMA integrity_check").fetchone()[0]
    return None if result == "ok" else str(result)


async def _connect(path: Path, clock: Clock) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """The writing connection (the schema brought up to date) and the reading one."""
    try:
        writer = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    try:
        await writer.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses no committed transaction on a crash of the
        # process, only (possibly) the last ones on a power cut.
        await writer.execute("PRAGMA synchronous=NORMAL")
        await writer.execute("PRAGMA busy_timeout=5000")
        await migrate(writer, clock)
        _yield_to_the_loop(writer)
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA query_only=ON")
        await reader.execute("PRAGMA busy_timeout=5000")
    except BaseException as exc:
        await writer.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        raise
    return writer, reader


def warn_if_open_to_others(path: Path) -> None:
    """A database from before files were created private, or opened up since: say so,
    and how to fix it (changing modes behind the operator's back could break a backup
    job that relies on them)."""
    quoted = shlex.quote(str(path))
    checks = (
        (path.parent, "lets other users in", f"chmod 700 {shlex.quote(str(path.parent))}"),
        (path, "can be read by other users", f"chmod 600 {quoted} {quoted}-wal {quoted}-shm"),
    )
    for target, problem, fix in checks:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            log.warning(
                "%s (mode %04o) %s, and the database holds admin password hashes and the "
                "usage ledger: run %s",
                target,
                mode,
                problem,
                fix,
            )


def create_private(path: Path) -> None:
    """The directory (0700) and the database file (0600), if missing, whatever the
    umask."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


class PathState(enum.Enum):
    OPEN = "the path names the open file"
    MISSING = "no file at the path"
    WAL_MISSING = "the open file's -wal is no longer at its path"
    REPLACED = "another file at the path"


class WatchedFile:
    """Which files an open database connection has, and whether their paths still
    name them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wal = path.with_name(path.name + "-wal")
        self.shm = path.with_name(path.name + "-shm")
        self._ids: dict[Path, _FileId | None] = {}

    def remember(self) -> None:
        """Call once the connection is open (and has read: SQLite makes -wal and -shm on
        the first read)."""
        self._ids = {p: _file_id(p) for p in (self.path, self.wal, self.shm)}

    def state(self) -> PathState:
        """One `stat` (two in WAL mode) when all is well."""
        current = _file_id(self.path)
        if current is None:
            return PathState.MISSING
        if current != self._ids[self.path]:
            return PathState.REPLACED
        wal = self._ids[self.wal]
        if wal is not None and _file_id(self.wal) != wal:
            return PathState.WAL_MISSING
        return PathState.OPEN

    def remove_stale_companions(self) -> None:
        """Remove the -wal and -shm of the file that was open, if still at their paths.

        Call once the old connection is closed and before a new file at the path is
        opened: SQLite would take a -wal it finds there for the new file's, and apply
        another database's pages to it. (SQLite itself leaves them: it neither
        checkpoints nor removes the -wal of a database file that has been unlinked.)
        """
        for companion in (self.wal, self.shm):
            remembered = self._ids.get(companion)
            if remembered is not None and _file_id(companion) == remembered:
                companion.unlink()

    def problem(self, state: PathState, reason: str = "") -> str:
        """What went wrong and what to do, for the log, `/health` and refused changes."""
        command = f"`llmgw db backup {shlex.quote(str(self.path))}`"
        if state is PathState.REPLACED:
            return (
                f"{self.path} is not an llmgw database ({reason}), and the gateway still "
                "has its database open, deleted: nothing more is written until an llmgw "
                f"database is there. Move the file away and run {command}, or put an llmgw "
                "database file (a backup) there; the gateway then opens it."
            )
        if state is PathState.WAL_MISSING:
            what = f"The database's write-ahead log {self.wal} was deleted"
        else:
            what = f"The database file {self.path} was deleted or moved away"
        return (
            f"{what} while the gateway had it open: nothing more is written until the "
            "database is back (usage records wait in memory, admin changes are refused). "
            f"Run {command} to write what the gateway holds back to {self.path}, or put "
            "an llmgw database file (a backup) there; the gateway then reopens it."
        )


def _file_id(path: Path) -> _FileId | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino
