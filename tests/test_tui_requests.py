"""The TUI's recent-requests tab: a live tail of a real gateway's ledger, filtered by
user and status on the gateway, paused and resumed; and how it looks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, Select

from llmgw.api_types import RequestRow
from llmgw.ledger import UsageRecord
from llmgw.state import STORE
from tui.app import LlmgwTui
from tui.requests import RequestsLoaded, RequestsPane

from .conftest import Gateway, auth, post_chat

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def record(user: str, status: int, timestamp: float, model: str = "fake-model") -> UsageRecord:
    return UsageRecord(
        f"req-{random.getrandbits(64):x}", user, None, "/v1/chat/completions", "POST",
        status, 12.0, None, 7, 3, "reported", model, None, timestamp,
    )  # fmt: skip


def shown(app: LlmgwTui) -> list[list[str]]:
    """The tail's rows: time, user, model, endpoint, status, prompt, completion, duration."""
    table = app.query_one("#requests-table", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def users_and_statuses(app: LlmgwTui) -> list[tuple[str, str]]:
    return [(row[1], row[4]) for row in shown(app)]


async def until(pilot: Pilot[None], check: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await pilot.pause(0.05)


async def chat(http: aiohttp.ClientSession, gateway: Gateway, key: str, **body: Any) -> int:
    return await post_chat(http, gateway, key, CHAT | body)


async def tab(pilot: Pilot[None]) -> None:
    await pilot.press("t")
    pilot.app.query_one("#requests-table", DataTable).focus()


async def test_new_requests_appear_at_the_top(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = (await gateway.create_key("alice"))["key"]
    await gateway.app[STORE].insert_request_logs([record("old-timer", 200, time.time() - 60)])
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await tab(pilot)
        await until(pilot, lambda: users_and_statuses(app) == [("old-timer", "200")])

        assert await chat(http, gateway, key) == 200
        await until(pilot, lambda: len(shown(app)) == 2)
        (row,) = [r for r in await gateway.ledger_rows() if r["user_id"] == "alice"]
        *top, duration = shown(app)[0]
        assert top == [
            row["timestamp"][11:19], "alice", "fake-model", "/v1/chat/completions", "200",
            str(row["prompt_tokens"]), str(row["completion_tokens"]),
        ]  # fmt: skip
        assert abs(float(duration.replace(",", "")) - row["duration_ms"]) <= 0.5
        assert row["completion_tokens"] == 3

        assert await chat(http, gateway, key, model="no-such-model") == 404
        await until(pilot, lambda: len(shown(app)) == 3)
        assert users_and_statuses(app) == [("alice", "404"), ("alice", "200"), ("old-timer", "200")]
        assert str(app.query_one("#requests-state", Label).content) == "live · 3 rows"

        # Another route: the row names it.
        async with http.post(
            f"{gateway.base_url}/embeddings",
            json={"model": "fake-model", "input": "alpha"},
            headers=auth(key),
        ) as resp:
            assert resp.status == 200
        await until(pilot, lambda: len(shown(app)) == 4)
        assert shown(app)[0][1:5] == ["alice", "fake-model", "/v1/embeddings", "200"]


async def test_filters_ask_the_gateway_for_a_user_and_a_status(gateway: Gateway) -> None:
    now = time.time()
    await gateway.app[STORE].insert_request_logs(
        [
            record("alice", 200, now - 50),
            record("bob", 500, now - 40),
            record("alice", 429, now - 30),
            record("bob", 200, now - 20),
            record("bob", 404, now - 10),
        ]
    )
    full = [("bob", "404"), ("bob", "200"), ("alice", "429"), ("bob", "500"), ("alice", "200")]
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await tab(pilot)
        await until(pilot, lambda: users_and_statuses(app) == full)

        await pilot.press("slash", *"bob", "enter")  # Enter applies and returns to the table
        await until(pilot, lambda: len(shown(app)) == 3)
        assert users_and_statuses(app) == [("bob", "404"), ("bob", "200"), ("bob", "500")]
        assert isinstance(app.focused, DataTable)

        await pilot.press("s")  # all -> errors
        await until(pilot, lambda: len(shown(app)) == 2)
        assert users_and_statuses(app) == [("bob", "404"), ("bob", "500")]

        await pilot.press("c")  # clear both filters
        await until(pilot, lambda: len(shown(app)) == 5)
        assert users_and_statuses(app) == full

        await pilot.press("s")  # errors, of everyone: alice's 429 is a refusal, not one
        await until(pilot, lambda: len(shown(app)) == 2)
        assert users_and_statuses(app) == [("bob", "404"), ("bob", "500")]
        assert str(app.query_one("#requests-status", Select).selection) == "error"
        await pilot.press("c")
        await until(pilot, lambda: len(shown(app)) == 5)

        select: Select[str] = app.query_one("#requests-status", Select)
        select.value = "429"  # as the mouse would choose it
        await until(pilot, lambda: len(shown(app)) == 1)
        assert users_and_statuses(app) == [("alice", "429")]
        select.value = "5xx"
        await until(pilot, lambda: users_and_statuses(app) == [("bob", "500")])


async def test_pause_stops_the_tail_and_resume_catches_up(
    gateway: Gateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = (await gateway.create_key("alice"))["key"]
    ticks = 0
    tick = RequestsPane.tick

    def counting_tick(pane: RequestsPane) -> None:
        nonlocal ticks
        ticks += 1
        tick(pane)

    monkeypatch.setattr(RequestsPane, "tick", counting_tick)
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await tab(pilot)
        assert await chat(http, gateway, key) == 200
        await until(pilot, lambda: len(shown(app)) == 1)

        await pilot.press("p")
        assert str(app.query_one("#requests-state", Label).content) == "PAUSED · 1 row"
        assert await chat(http, gateway, key) == 200
        assert await chat(http, gateway, key) == 200
        await gateway.flush_ledger()
        seen = ticks
        await until(pilot, lambda: ticks >= seen + 3)  # three ticks that would have shown them
        assert len(shown(app)) == 1

        await pilot.press("p")
        await until(pilot, lambda: len(shown(app)) == 3)
        assert str(app.query_one("#requests-state", Label).content) == "live · 3 rows"


# --- the look ------------------------------------------------------------------------

ROWS: list[RequestRow] = [
    {"id": 100 - i, "request_id": f"req-{i}", "timestamp": f"2026-11-27T18:{59 - i:02d}:07.123Z",
     "user_id": user, "api_key_id": 3, "endpoint": endpoint, "model": model,
     "status_code": status, "prompt_tokens": prompt, "completion_tokens": completion,
     "usage_source": "reported", "duration_ms": duration, "ttft_ms": None, "upstream": None}
    for i, (user, model, status, prompt, completion, duration) in enumerate([
        ("alice", "llama-3.1-70b", 200, 1_204, 356, 2_840.5),
        ("build-bot", "qwen2.5-7b", 200, 88, 12, 95.2),
        ("build-bot", "qwen2.5-7b", 429, 0, 0, 0.3),
        ("carol", "llama-3.1-70b", 502, 640, 0, 30_012.0),
        ("alice", None, 404, 0, 0, 1.9),
        ("carol", "llama-3.1-70b", 499, 310, 41, 812.0),
        ("alice", "llama-3.1-70b", 200, 5_120, 1_024, 9_400.0),
        ("build-bot", "qwen2.5-7b", 200, 91, 14, 88.7),
    ] * 3)
    # build-bot's requests go to the text completions route: a second endpoint shown.
    for endpoint in ["/v1/completions" if user == "build-bot" else "/v1/chat/completions"]
]  # fmt: skip


def showing(rows: list[RequestRow], *keys: str, status: str = "all") -> Any:
    async def run_before(pilot: Pilot[None]) -> None:
        await tab(pilot)
        pane = pilot.app.query_one(RequestsPane)
        pane.query_one("#requests-status", Select).value = status
        await pilot.pause()  # the filter applies (and, not connected, fetches nothing)
        pane.post_message(RequestsLoaded(rows, 0, None, None if status == "all" else status))
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


def canned() -> LlmgwTui:
    return LlmgwTui(Path("/run/llmgw/admin.sock"), live=False)


def test_look_80x24(snap_compare: Any) -> None:
    assert snap_compare(canned(), terminal_size=(80, 24), run_before=showing(ROWS))


def test_look_120x40(snap_compare: Any) -> None:
    assert snap_compare(canned(), terminal_size=(120, 40), run_before=showing(ROWS))


def test_look_paused_with_errors_only_80x24(snap_compare: Any) -> None:
    errors = [row for row in ROWS if row["status_code"] >= 400 and row["status_code"] != 429]
    run_before = showing(errors, "p", status="error")
    assert snap_compare(canned(), terminal_size=(80, 24), run_before=run_before)
