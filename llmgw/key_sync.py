"""Following key changes made through other replicas, so that a key created, revoked,
rotated, updated or deleted through any of them is honoured by all within a second.

A replica's own changes reach its key table on commit (`admin/keys.py`). Every key
change also enters the store's key change log, numbered; `KeySync` remembers the
version it has applied and reads the changes after it (each changed key's row as it is
now, or its absence) whenever the store hears that a change committed (PostgreSQL's
NOTIFY) and, in case one was not heard (a reconnection, a restarted server), every
`interval` seconds. Reading is applied on a transaction's commit, in order with this
replica's own changes, and applying a change twice (this replica's own, read back)
changes nothing. Talks to the `Store` interface only: on SQLite there is nothing to
hear and the periodic read finds only this process's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .api_types import KeysStatus
from .keys import KeyTable
from .limits import Limiter
from .store import KeyChanges, Store, StoreError

log = logging.getLogger("llmgw.keys")

# /health says degraded once the change log has not been read for this many intervals.
STALE_INTERVALS = 3


class KeySync:
    def __init__(self, store: Store, keys: KeyTable, limiter: Limiter, interval: float) -> None:
        self._store = store
        self._keys = keys
        self._limiter = limiter
        self._interval = interval
        self._version = 0  # of the change log, applied to the key table
        self._synced = time.monotonic()  # when the log was last read
        self._listening = False
        self._error: str | None = None
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Fill the key table (at start). The version is read first: a change committed
        in between is read again by the first catch-up, which is harmless."""
        self._version = await self._store.key_version()
        for key in await self._store.load_keys():
            self._keys.put(key)
        self._synced = time.monotonic()

    async def run(self) -> None:
        """Until cancelled: listen, and catch up on each change heard and every interval."""
        listener = asyncio.create_task(self._listen(), name="key-listener")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                self._wake.clear()
                await self._read()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def catch_up(self) -> None:
        """Apply the changes after the version applied; `StoreError` if the log cannot
        be read (nothing is applied then)."""
        forget: list[int] = []
        async with self._store.transaction() as tx:
            changes = await tx.key_changes_since(self._version)
            tx.on_commit(lambda: forget.extend(self._apply(changes)))
        self._synced = time.monotonic()
        # No request can name these keys any more: what their limits held can go.
        for key_id in forget:
            await self._limiter.forget(key_id)

    def status(self) -> KeysStatus:
        return KeysStatus(
            count=len(self._keys),
            version=self._version,
            synced_s_ago=round(time.monotonic() - self._synced, 1),
            listening=self._listening,
            error=self._error,
        )

    @property
    def stale(self) -> bool:
        """Not read for long: changes made through other replicas may not apply here."""
        return time.monotonic() - self._synced > STALE_INTERVALS * self._interval

    def _apply(self, changes: KeyChanges) -> list[int]:
        """Put each changed key's row, or remove it; the ids of keys removed."""
        removed = []
        for key_id, key in changes.keys.items():
            if key is not None:
                self._keys.put(key)
            elif self._keys.get(key_id) is not None:
                self._keys.remove(key_id)
                removed.append(key_id)
        self._version = max(self._version, changes.version)
        return removed

    async def _read(self) -> None:
        try:
            await self.catch_up()
        except StoreError as exc:
            if self._error is None:
                log.warning("cannot read key changes, keys may lag other replicas: %s", exc)
            self._error = str(exc)
        else:
            if self._error is not None:
                log.info("key changes read again, version %d", self._version)
            self._error = None

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                await self._store.listen_key_changes(self._heard, self._began_listening)
            except StoreError as exc:
                if not lost:
                    log.warning(
                        "not listening for key changes (read every %g s instead): %s",
                        self._interval,
                        exc,
                    )
                lost = True
            else:
                return  # nothing to listen to: one process
            finally:
                self._listening = False
            await asyncio.sleep(self._interval)

    def _heard(self, version: int) -> None:
        if version > self._version:
            self._wake.set()

    def _began_listening(self) -> None:
        self._listening = True
        self._wake.set()  # what committed while not listening was not heard: read it
