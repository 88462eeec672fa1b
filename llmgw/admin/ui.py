"""The seed's admin page (`GET /admin/index.html`), a small static page on `/admin/api`.

Served from the package with a strict Content-Security-Policy: no inline script, no
other origin, no framing; the page itself sets every value from the API as text.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_routes(app: web.Application) -> None:
    pages = {
        name: resources.files("llmgw").joinpath("admin_ui", name).read_bytes() for name in _FILES
    }

    def serve(name: str) -> web.Response:
        return web.Response(
            body=pages[name], content_type=_FILES[name], charset="utf-8", headers=_HEADERS
        )

    async def page(request: web.Request) -> web.Response:
        return serve(request.match_info.get("name", "index.html"))

    async def to_index(request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin/index.html")

    app.router.add_get("/admin", to_index)
    app.router.add_get("/admin/", to_index)
    app.router.add_get("/admin/{name:index\\.html|app\\.js|app\\.css}", page)
