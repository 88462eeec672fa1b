"""`GET /usage?days=7&by=user|key|model|day`: usage statistics from the hourly rollups.

The figures and their definitions are `llmgw.rollups`'; this handler only checks the
query and says which window and grouping were asked for.
"""

from __future__ import annotations

from aiohttp import web

from .. import rollups
from ..errors import GatewayError
from ..state import CLOCK, STORE
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
    store = request.config_dict[STORE]
    # Not from a deleted database file: what it says may be about to vanish.
    with store_available():
        await store.check()
        body = await store.usage_summary(days=days, by=by, now=request.config_dict[CLOCK].wall())
    return json_response(body)
