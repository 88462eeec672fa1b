"""The failure-case suite: the real gateway broken on purpose, on loopback, bounded.

Every case ends with `assert_settled`: the gateway healthy, nothing in flight (its
own gauge and every upstream's), no usage record waiting or dropped, and exactly the
ledger rows the case's requests must have left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import aiohttp
import pytest

from llmgw.config import ServerSettings
from llmgw.state import LEDGER, METRICS, UPSTREAMS

from ..conftest import Gateway, GatewayFactory


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
    return ledger_rows


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
