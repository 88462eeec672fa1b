"""The admin API: one set of handlers behind two doors.

The Unix socket (`llmgw.admin_socket`: no login, the caller's uid checked) and
`/admin/api` on the public port (`remote`: admin login, bearer token) both serve the
routes added here; each door's middleware says who the caller is (`common.ACTOR`).
"""

from __future__ import annotations

from aiohttp import web

from ..health import health
from . import audit, budgets, db, keys, requests, stats, tiers, usage, users


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    for module in (keys, budgets, tiers, users, audit, db, usage, stats, requests):
        app.add_routes(module.routes)
    stats.end_streams_on_shutdown(app)
