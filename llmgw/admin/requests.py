"""`GET /requests`: the newest ledger rows, for a live tail (the TUI polls with
`after_id`, the id of the newest row it has). `status=error` means what `errors` means
everywhere (`llmgw.rollups`): 400 and up, 499 included, 429 not."""

from __future__ import annotations

import re

from aiohttp import web

from ..errors import GatewayError
from ..state import STORE
from .common import int_query, json_response

routes = web.RouteTableDef()

_STATUS_CLASS = re.compile(r"^([1-5])xx$")


@routes.get("/requests")
async def recent_requests(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 100, 1, 1000)
    after_id = int_query(request, "after_id", 0, 0, 2**62)
    status = request.query.get("status")
    rows = await request.config_dict[STORE].recent_requests(
        limit,
        after_id=after_id,
        user_id=request.query.get("user_id") or None,
        status=_status_range(status),
        # A refusal is not an error: the same `errors` as /usage and /stats count.
        except_status=429 if status == "error" else None,
    )
    return json_response({"data": rows})


def _status_range(value: str | None) -> tuple[int, int] | None:
    """`429`, `4xx`, or `error` (400 and up; the caller leaves out the 429s) as an
    inclusive range of statuses."""
    if not value:
        return None
    if value == "error":
        return 400, 599
    if match := _STATUS_CLASS.match(value):
        first = int(match[1]) * 100
        return first, first + 99
    if value.isdigit() and 100 <= int(value) <= 599:
        return int(value), int(value)
    raise GatewayError(
        400, "'status' must be a status (429), a class (4xx) or 'error'.", param="status"
    )
