"""The database through the admin API: an online backup, and pruning old ledger rows.

A backup is SQLite's online backup API run on the store's own connection into a
temporary file beside the database (`Store.backup`), then streamed to the caller: a
consistent copy, taken while the gateway keeps serving (the ledger's writes wait for
it). On the open connection, it works while the database file is deleted: `llmgw db
backup PATH` can write it back. PostgreSQL has its own tool (pg_dump): asked for a
backup, the gateway answers 501 saying so.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..api_types import PruneResult
from ..errors import GatewayError
from ..state import CLOCK, STORE
from ..store import Unsupported
from ..times import iso_utc
from .common import actor, change, field, json_response, read_json, store_available

routes = web.RouteTableDef()

CHUNK = 256 * 1024


@routes.get("/db/backup")
async def backup(request: web.Request) -> web.StreamResponse:
    try:
        copy = await request.config_dict[STORE].backup()
    except Unsupported as exc:
        message = str(exc)
        raise GatewayError(
            501, f"{message[:1].upper()}{message[1:]}.", code="unsupported"
        ) from None
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


@routes.post("/db/prune")
async def prune(request: web.Request) -> web.Response:
    body = await read_json(request, frozenset({"older_than_days"}))
    if "older_than_days" not in body:
        raise GatewayError(400, "'older_than_days' is required.", param="older_than_days")
    days = field(body, "older_than_days", _days, "a whole number of days, at least 1")
    before = request.config_dict[CLOCK].wall() - days * 86400
    store = request.config_dict[STORE]
    with store_available():
        deleted = await store.prune_request_logs(before)
    async with change(store) as tx:
        await tx.record_audit(
            actor(request),
            "db.prune",
            "request_logs",
            {"older_than_days": days, "before": iso_utc(before)},
            {"deleted": deleted},
        )
    return json_response(PruneResult(deleted=deleted, before=iso_utc(before)))


def _days(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError
    return value
