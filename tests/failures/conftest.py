"""The failure-case suite: the real gateway broken on purpose, on loopback, bounded.

Every case ends with `assert_settled`: the gateway healthy, nothing in flight (its
own gauge, every upstream's, and every key's in-flight permits), no usage record
waiting or dropped, exactly the ledger rows the case's requests must have left, and,
with a clock that never moved, no token still reserved: each token bucket and budget
holds exactly what the ledger charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import aiohttp
import pytest

from llmgw.config import ServerSettings
from llmgw.limits import limits_for
from llmgw.state import CLOCK, KEYS, LEDGER, LIMITER, METRICS, UPSTREAMS

from ..conftest import FakeClock, Gateway, GatewayFactory

# Where conftest's FakeClock starts its monotonic time: a clock still there never moved.
_FROZEN_AT = FakeClock().monotonic()


async def assert_settled(gateway: Gateway, *, rows: int | None = None) -> list[dict[str, Any]]:
    """Check the end state of a failure case; the ledger rows, oldest first."""
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/health") as resp:
        health = await resp.json()
    assert resp.status == 200, health
    ledger_rows = await gateway.ledger_rows()  # waits (bounded) for in-flight and pending
    assert gateway.app[METRICS].in_flight == 0
    assert [u.in_flight for u in gateway.app[UPSTREAMS].upstreams] == [0] * len(
        gateway.app[UPSTREAMS].upstreams
    )
    ledger = gateway.app[LEDGER]
    assert (ledger.pending, ledger.dropped) == (0, 0)
    if rows is not None:
        assert len(ledger_rows) == rows, [r["status_code"] for r in ledger_rows]
    await assert_limits_released(gateway, ledger_rows)
    return ledger_rows


async def assert_limits_released(gateway: Gateway, ledger_rows: list[dict[str, Any]]) -> None:
    """Every key of the rows holds no request in flight; when the gateway's clock is a
    FakeClock that never moved (nothing refilled, no period ended), each key budget has
    used exactly the tokens its rows charged (nothing left reserved), and so has each
    token bucket of the memory backend. Redis refills its buckets on its own clock, which
    the test cannot stop: there a bucket holds at least its limit less the charge."""
    clock = gateway.app[CLOCK]
    frozen = isinstance(clock, FakeClock) and clock.monotonic() == _FROZEN_AT
    own_clock = gateway.app[LIMITER].status().backend == "memory"
    charged: dict[int, int] = {}
    for row in ledger_rows:
        key_id = row["api_key_id"]
        if key_id is not None:
            tokens = row["prompt_tokens"] + row["completion_tokens"]
            charged[key_id] = charged.get(key_id, 0) + tokens
    for key_id, used in charged.items():
        key = gateway.app[KEYS].get(key_id)
        if key is None:
            continue  # deleted since: its limits went with it
        limits = limits_for(key, gateway.settings)
        decision = await gateway.app[LIMITER].windows(key_id, limits)
        if limits.max_in_flight:
            assert decision.in_flight == (0, limits.max_in_flight), f"key {key_id} holds permits"
        if not frozen:
            continue
        for window in (decision.tokens_minute, decision.tokens_day):
            if window is not None:
                left = max(0, window.limit - used)
                if own_clock:
                    assert window.remaining == left, f"key {key_id}: {window} after {used}"
                else:
                    assert window.remaining >= left, f"key {key_id}: {window} after {used}"
        if decision.key_budget is not None:
            assert decision.key_budget.used == used, f"key {key_id}: {decision.key_budget}"


def open_sockets() -> int:
    """Sockets this process holds now (the gateway's, the fake vLLM's, the tests').

    Sockets, not every file: SQLite holds a closed connection's file open while another
    connection in the process has locks on it, so the tests' own reads of the ledger
    come and go as database files. A request's connections are all sockets.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # gone between the listing and the look
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def live_tasks() -> int:
    return len(asyncio.all_tasks())


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway that notices an upstream come back within a tenth of a second."""
    gw: Gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, health_check_interval=0.1)
    )
    return gw
