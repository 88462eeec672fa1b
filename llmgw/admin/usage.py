"""`GET /usage?days=7&by=user|key|model|day`: usage statistics from the hourly rollups.

The figures and their definitions are `llmgw.rollups`'; this handler only checks the
query and says which window and grouping were asked for.
"""

from __future__ import annotations

from aiohttp import web

from .. import rollups
from ..errors import GatewayError
from ..state import CLOCK, SETTINGS, STORE
from .common import int_query, json_response, store_available

routes = web.RouteTableDef()


@routes.get("/usage")
async def usage(request: web.Request) -> web.Response:
    days = int_query(request, "days", 7, 1, 3650)
    try:
        by = rollups.grouping(request.query.get("by", "user"))
    except ValueError:
        raise GatewayError(
            400, f"'by' must be one of: {', '.join(rollups.GROUPINGS)}.", param="by"
        ) from None
    # The statistics are read from the file, on a connection of their own: not while
    # it is deleted.
    with store_available():
        await request.config_dict[STORE].check()
    body = await rollups.summary(
        request.config_dict[SETTINGS].database_path,
        days=days,
        by=by,
        now=request.config_dict[CLOCK].wall(),
    )
    return json_response(body)
