"""User budgets: a token budget shared by all keys of a user, per calendar period.

`PUT|GET|DELETE /users/{user_id}/budget` and `GET /budgets`. A change is one
transaction with its audit row; it enters every key of the user in the key change log
(the keys carry their user's budget), so other replicas follow, and this process's key
table takes the user's keys on commit, so the next request sees the budget.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..api_types import BUDGET_PERIODS
from ..errors import GatewayError
from ..state import KEYS, STORE
from ..store import Transaction, UserBudgetChange
from .common import actor, budget_period, change, field, json_response, read_json

routes = web.RouteTableDef()

_FIELDS = frozenset({"budget_tokens", "budget_period"})


@routes.get("/budgets")
async def list_budgets(request: web.Request) -> web.Response:
    return json_response({"data": await request.config_dict[STORE].user_budgets()})


@routes.get("/users/{user_id}/budget")
async def get_budget(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    budget = await request.config_dict[STORE].user_budget(user_id)
    if budget is None:
        raise _no_budget(user_id)
    return json_response(budget)


@routes.put("/users/{user_id}/budget")
async def set_budget(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await read_json(request, _FIELDS)
    if "budget_tokens" not in body:
        raise GatewayError(
            400, "'budget_tokens' is required: the tokens the user may use a period.",
            param="budget_tokens",
        )  # fmt: skip
    tokens = field(body, "budget_tokens", _tokens, "a whole number, 0 or more (0: unlimited)")
    period = (
        field(body, "budget_period", budget_period, f"one of {', '.join(BUDGET_PERIODS)}")
        if "budget_period" in body
        else "month"
    )
    async with change(request.config_dict[STORE]) as tx:
        changed = await tx.set_user_budget(user_id, tokens, period)
        await _record(request, tx, "user.budget.set", user_id, changed)
    assert changed.after is not None
    return json_response(changed.after)


@routes.delete("/users/{user_id}/budget")
async def clear_budget(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    async with change(request.config_dict[STORE]) as tx:
        changed = await tx.clear_user_budget(user_id)
        if changed.before is None:
            raise _no_budget(user_id)
        await _record(request, tx, "user.budget.clear", user_id, changed)
    return json_response(changed.before)


async def _record(
    request: web.Request, tx: Transaction, action: str, user_id: str, changed: UserBudgetChange
) -> None:
    """The audit row, and the user's keys into this process's key table on commit."""
    await tx.record_audit(actor(request), action, f"user:{user_id}", changed.before, changed.after)
    keys = request.config_dict[KEYS]

    def follow() -> None:
        for key in changed.keys:
            keys.put(key)

    tx.on_commit(follow)


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"].strip()
    if not user_id:
        raise GatewayError(400, "The user id in the path is empty.", param="user_id")
    return user_id


def _tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError
    return value


def _no_budget(user_id: str) -> GatewayError:
    return GatewayError(404, f"User {user_id!r} has no budget.", code="budget_not_found")
