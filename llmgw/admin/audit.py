"""`GET /audit`: who changed what, newest first."""

from __future__ import annotations

from aiohttp import web

from ..state import STORE
from .common import int_query, json_response

routes = web.RouteTableDef()


@routes.get("/audit")
async def list_audit(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 100, 1, 10_000)
    rows = await request.config_dict[STORE].list_audit(limit, request.query.get("action"))
    return json_response({"data": rows})
