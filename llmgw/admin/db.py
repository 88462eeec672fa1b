"""The database through the admin API: an online backup, and pruning old ledger rows.

A backup is SQLite's online backup API run on a connection of its own in a worker
thread, into a temporary file that is then streamed to the caller: a consistent copy,
taken while the gateway keeps serving and the ledger keeps writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from aiohttp import web

from ..errors import GatewayError
from ..state import CLOCK, SETTINGS, STORE
from ..times import iso_utc
from .common import actor, field, json_response, read_json

routes = web.RouteTableDef()

CHUNK = 256 * 1024


@routes.get("/db/backup")
async def backup(request: web.Request) -> web.StreamResponse:
    source = request.config_dict[SETTINGS].database_path
    copy = await asyncio.to_thread(_backup, source)
    try:
        file = await asyncio.to_thread(copy.open, "rb")
        with file:
            size = os.fstat(file.fileno()).st_size
            response = web.StreamResponse(
                headers={"Content-Type": "application/vnd.sqlite3", "Content-Length": str(size)}
            )
            await response.prepare(request)
            while chunk := await asyncio.to_thread(file.read, CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(copy.unlink, missing_ok=True)


def _backup(source: Path) -> Path:
    """A consistent copy of the database beside it (same disk, same permissions)."""
    fd, name = tempfile.mkstemp(prefix=".llmgw-backup-", suffix=".db", dir=source.parent)
    os.close(fd)
    # A connection of its own: the gateway's connection keeps serving meanwhile.
    read_only = f"{source.resolve().as_uri()}?mode=ro"
    with (
        contextlib.closing(sqlite3.connect(read_only, uri=True)) as src,
        contextlib.closing(sqlite3.connect(name)) as dst,
    ):
        src.backup(dst, pages=1024)
    return Path(name)


@routes.post("/db/prune")
async def prune(request: web.Request) -> web.Response:
    body = await read_json(request, frozenset({"older_than_days"}))
    if "older_than_days" not in body:
        raise GatewayError(400, "'older_than_days' is required.", param="older_than_days")
    days = field(body, "older_than_days", _days, "a whole number of days, at least 1")
    before = request.config_dict[CLOCK].wall() - days * 86400
    store = request.config_dict[STORE]
    deleted = await store.prune_request_logs(before)
    async with store.transaction():
        await store.record_audit(
            actor(request),
            "db.prune",
            "request_logs",
            {"older_than_days": days, "before": iso_utc(before)},
            {"deleted": deleted},
        )
    return json_response({"deleted": deleted, "before": iso_utc(before)})


def _days(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError
    return value
