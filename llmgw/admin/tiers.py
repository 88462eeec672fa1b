"""`GET /tiers`: the configured rate-limit tiers, for forms that create keys."""

from __future__ import annotations

from aiohttp import web

from ..api_types import Tiers, TierView
from ..state import SETTINGS
from .common import json_response

routes = web.RouteTableDef()


@routes.get("/tiers")
async def list_tiers(request: web.Request) -> web.Response:
    settings = request.config_dict[SETTINGS]
    tiers = Tiers(
        default=settings.admin.default_tier,
        data=[
            TierView(
                name=name,
                requests_per_minute=tier.requests_per_minute,
                requests_per_hour=tier.requests_per_hour,
            )
            for name, tier in settings.tiers.items()
        ],
    )
    return json_response(tiers)
