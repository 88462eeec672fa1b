"""What every admin handler shares: who is asking, JSON in and out, field checks, and
changes in the store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import orjson
from aiohttp import web

from ..api_types import BUDGET_PERIODS, BudgetPeriod
from ..errors import GatewayError
from ..store import Actor, Store, StoreUnavailable, Transaction

T = TypeVar("T")

# Set by each door's middleware: the socket's peer uid, or the remote admin user.
ACTOR = web.RequestKey("actor", Actor)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def read_json(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` fields, or a 400 naming the problem."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    if unknown := sorted(set(body) - allowed):
        raise GatewayError(
            400,
            f"Unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}.",
            param=unknown[0],
        )
    return body


def field(body: dict[str, Any], name: str, check: Callable[[Any], T], what: str) -> T:
    """`body[name]` passed through `check`, or a 400 saying what it must be."""
    try:
        return check(body[name])
    except (TypeError, ValueError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise GatewayError(400, f"'{name}' must be {what}{detail}.", param=name) from None


def budget_period(value: Any) -> BudgetPeriod:
    """A budget's calendar period (for `field`)."""
    for period in BUDGET_PERIODS:
        if value == period:
            return period
    raise TypeError


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise GatewayError(
            400, f"'{name}' must be a whole number from {low} to {high}.", param=name
        )
    return value


def actor(request: web.Request) -> Actor:
    return request[ACTOR]


@contextlib.contextmanager
def store_available() -> Iterator[None]:
    """A store that cannot serve (its database file deleted, say) is a 503 whose
    message says why and what to do."""
    try:
        yield
    except StoreUnavailable as exc:
        raise GatewayError(503, str(exc), code="database_unavailable") from None


@contextlib.asynccontextmanager
async def change(store: Store) -> AsyncIterator[Transaction]:
    """The transaction of an admin change (`store_available`)."""
    with store_available():
        async with store.transaction() as tx:
            yield tx
