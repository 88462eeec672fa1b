"""`GET /stats` and `GET /stats/stream`: live per-second figures (being built)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
