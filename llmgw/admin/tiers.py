"""`GET /tiers`: the configured tiers and all their limits, for forms that create keys."""

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
                tokens_per_minute=tier.tokens_per_minute,
                tokens_per_day=tier.tokens_per_day,
                max_in_flight=tier.max_in_flight,
                budget_tokens=tier.budget_tokens,
                budget_period=tier.budget_period,
                default_max_tokens=tier.default_max_tokens,
                priority=tier.priority,
            )
            for name, tier in settings.tiers.items()
        ],
    )
    return json_response(tiers)
