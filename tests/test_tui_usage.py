"""The TUI's usage tab: `/usage` of a real gateway by user, key, model and day over the
chosen window, as a table with a TOTAL line and a bar chart; and how it looks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from llmgw.api_types import UsageFigures, UsageGroup, UsageReport
from llmgw.ledger import UsageRecord
from llmgw.state import STORE
from llmgw.times import iso_utc
from tui.app import LlmgwTui
from tui.bar_chart import BarChart, bar
from tui.usage import UsageLoaded, UsagePane

from .conftest import Gateway

HOUR, DAY = 3600.0, 86400.0


def record(
    key_id: int | None, user: str, timestamp: float, *, status: int = 200,
    prompt: int = 10, completion: int = 5, model: str | None = "fake-model",
    endpoint: str = "/v1/chat/completions",
) -> UsageRecord:  # fmt: skip
    return UsageRecord(
        f"req-{random.getrandbits(64):x}", user, key_id, endpoint, "POST",
        status, 100.0, None, prompt, completion, "reported", model, None, timestamp,
    )  # fmt: skip


def cells(app: LlmgwTui) -> list[list[str]]:
    table = app.query_one("#usage-table", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def counts(app: LlmgwTui) -> dict[str, list[str]]:
    """Group (or key prefix) -> requests, errors, 429s, prompt, completion."""
    table = app.query_one("#usage-table", DataTable)
    first = 2 if table.ordered_columns[0].label.plain == "key" else 1
    return {row[0]: row[first : first + 5] for row in cells(app)}


async def until(pilot: Pilot[None], check: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await pilot.pause(0.05)


async def test_usage_by_user_key_model_and_day_over_the_chosen_window(gateway: Gateway) -> None:
    alice = await gateway.create_key("alice")
    bob = await gateway.create_key("bob")
    now = time.time()
    await gateway.app[STORE].insert_request_logs(
        [
            *(record(alice["id"], "alice", now - HOUR) for _ in range(3)),
            record(alice["id"], "alice", now - HOUR, status=500),
            record(alice["id"], "alice", now - HOUR, status=429, prompt=0, completion=0),
            *(
                record(
                    bob["id"],
                    "bob",
                    now - 3 * DAY,
                    model="big-model",
                    prompt=100,
                    completion=50,
                    endpoint="/v1/completions",
                )
                for _ in range(2)
            ),
            record(None, "carol", now - 3 * DAY, status=429, model=None, prompt=0, completion=0),
            record(alice["id"], "alice", now - 20 * DAY),
            record(bob["id"], "bob", now - 60 * DAY, model="big-model"),
        ]
    )
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("u")
        app.query_one("#usage-table", DataTable).focus()
        # The default: by user over 7 days, the biggest first, then the total.
        await until(pilot, lambda: "alice" in counts(app))
        assert counts(app) == {
            "alice": ["5", "1", "1", "40", "20"],
            "bob": ["2", "0", "0", "200", "100"],
            "carol": ["1", "0", "1", "0", "0"],
            "TOTAL": ["8", "1", "2", "240", "120"],
        }
        assert cells(app)[2][6:] == ["–", "–"]  # only 429s: no latency to speak of
        chart = app.query_one("#usage-chart", BarChart)
        assert chart.bars == [("alice", 5.0), ("bob", 2.0), ("carol", 1.0)]
        await pilot.press("m")  # chart tokens instead
        assert chart.bars == [("alice", 60.0), ("bob", 300.0), ("carol", 0.0)]

        await pilot.press("plus")  # 30 days
        await until(pilot, lambda: counts(app)["TOTAL"][0] == "9")
        assert counts(app)["alice"][0] == "6"
        await pilot.press("plus")  # 90 days
        await until(pilot, lambda: counts(app)["TOTAL"][0] == "10")
        assert counts(app)["bob"][0] == "3"
        await pilot.press("plus")  # already the longest window
        for _ in range(3):
            await pilot.press("minus")  # down to 1 day: only the last hour's
        await until(pilot, lambda: counts(app)["TOTAL"][0] == "5")
        assert list(counts(app)) == ["alice", "TOTAL"]

        await pilot.press("plus", "b")  # by key, over 7 days
        await until(pilot, lambda: cells(app)[0][0].startswith("sk-"))
        assert cells(app)[0][:7] == [alice["key_prefix"], "alice", "5", "1", "1", "40", "20"]
        assert cells(app)[1][:3] == [bob["key_prefix"], "bob", "2"]
        assert cells(app)[2][:3] == ["(no key)", "carol", "1"]
        assert chart.bars[0] == (f"alice {alice['key_prefix']}", 60.0)

        await pilot.press("b")  # by model
        await until(pilot, lambda: "big-model" in counts(app))
        assert counts(app) == {
            "fake-model": ["5", "1", "1", "40", "20"],
            "big-model": ["2", "0", "0", "200", "100"],
            "(no model)": ["1", "0", "1", "0", "0"],
            "TOTAL": ["8", "1", "2", "240", "120"],
        }

        await pilot.press("b")  # by endpoint
        await until(pilot, lambda: "/v1/completions" in counts(app))
        assert counts(app) == {
            "/v1/chat/completions": ["6", "1", "2", "40", "20"],
            "/v1/completions": ["2", "0", "0", "200", "100"],
            "TOTAL": ["8", "1", "2", "240", "120"],
        }
        assert [label for label, _ in chart.bars] == ["/v1/chat/completions", "/v1/completions"]

        await pilot.press("b")  # by day: every date of the window in order, quiet ones too
        await until(pilot, lambda: len(counts(app)) == 7 + 2)
        window = [iso_utc(now - (7 - i) * DAY)[:10] for i in range(8)]
        assert list(counts(app)) == [*window, "TOTAL"]
        by_day = {day: row[0] for day, row in counts(app).items()}
        assert by_day[iso_utc(now - 3 * DAY)[:10]] == "3"
        assert by_day[iso_utc(now - HOUR)[:10]] == "5"
        assert sum(int(n) for n in by_day.values()) == 2 * 8
        assert [label for label, _ in chart.bars] == window


def test_a_bar_is_drawn_in_eighths_of_a_cell() -> None:
    assert bar(10, 10, 4) == "████"
    assert bar(5, 10, 4) == "██"
    assert bar(1, 16, 4) == "▎"  # a quarter of a cell
    assert bar(1, 10_000, 4) == "▏"  # tiny, yet not nothing
    assert bar(0, 10, 4) == ""


# --- the look ------------------------------------------------------------------------

SINCE = "2026-11-20T18:00:00.000Z"


def figures(requests: int, errors: int, limited: int, prompt: int, completion: int,
            p50: float | None, p95: float | None) -> UsageFigures:  # fmt: skip
    return {
        "requests": requests, "errors": errors, "rate_limited": limited,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "latency_p50_ms": p50, "latency_p95_ms": p95,
        "latency_mean_ms": p50,
    }  # fmt: skip


def group(name: str, f: UsageFigures) -> UsageGroup:
    """A group by user, model or day, which has no key fields. (Field by field: mypy
    takes no `**f` for a type with optional keys, which any UsageFigures might hold.)"""
    return {
        "group": name, "requests": f["requests"], "errors": f["errors"],
        "rate_limited": f["rate_limited"], "prompt_tokens": f["prompt_tokens"],
        "completion_tokens": f["completion_tokens"], "total_tokens": f["total_tokens"],
        "latency_mean_ms": f["latency_mean_ms"], "latency_p50_ms": f["latency_p50_ms"],
        "latency_p95_ms": f["latency_p95_ms"],
    }  # fmt: skip


BY_USER: UsageReport = {
    "days": 7, "by": "user", "since": SINCE,
    "data": [
        group("alice", figures(1234, 12, 3, 456_789, 98_765, 312.5, 1840.0)),
        group("build-bot", figures(420, 0, 57, 88_000, 12_345, 95.2, 410.0)),
        group("carol", figures(57, 2, 0, 9_100, 4_020, 7.3, 66.1)),
        group("svc-nightly", figures(4, 0, 4, 0, 0, None, None)),
    ],
    "total": figures(1715, 14, 64, 553_889, 115_130, 250.0, 1700.0),
}  # fmt: skip
BY_KEY: UsageReport = {
    "days": 30, "by": "key", "since": SINCE,
    "data": [
        {"group": 3, "key_id": 3, "key_prefix": "sk-internal-Q7xa", "user_id": "alice",
         **figures(1000, 10, 3, 400_000, 90_000, 300.0, 1800.0)},
        {"group": 7, "key_id": 7, "key_prefix": "sk-internal-b_9K", "user_id": "build-bot",
         **figures(420, 0, 57, 88_000, 12_345, 95.2, 410.0)},
        {"group": 4, "key_id": 4, "key_prefix": "sk-internal-mm2P", "user_id": "alice",
         **figures(234, 2, 0, 56_789, 8_765, 350.0, 1900.0)},
        {"group": None, "key_id": None, "key_prefix": None, "user_id": "anonymous",
         **figures(6, 6, 0, 0, 0, 0.4, 0.9)},
    ],
    "total": figures(1660, 18, 60, 544_789, 111_110, 280.0, 1800.0),
}  # fmt: skip
BY_DAY: UsageReport = {
    "days": 7, "by": "day", "since": SINCE,
    "data": [
        group(f"2026-11-{20 + i}", figures(n, n // 20, n // 50, n * 300, n * 60, 200, 900))
        for i, n in enumerate((120, 340, 95, 0, 410, 600, 150, 30))
        if n
    ],
    "total": figures(1745, 85, 33, 523_500, 104_700, 200.0, 900.0),
}  # fmt: skip


def showing(usage: UsageReport, *keys: str) -> Callable[[Pilot[None]], Any]:
    async def run_before(pilot: Pilot[None]) -> None:
        await pilot.press("u")
        pane = pilot.app.query_one(UsagePane)
        pane.query_one("#usage-by").value = usage["by"]  # type: ignore[attr-defined]
        pane.query_one("#usage-days").value = usage["days"]  # type: ignore[attr-defined]
        pane.query_one("#usage-table").focus()
        await pilot.pause()
        pane.post_message(UsageLoaded(usage))
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


def canned() -> LlmgwTui:
    return LlmgwTui(Path("/run/llmgw/admin.sock"), live=False)


async def test_at_80_columns_the_figures_stay_whole() -> None:
    """Names give way (a key's prefix its common part first), never the figures: no
    sideways scrollbar, and the p95 column is there whole."""
    app = canned()
    async with app.run_test(size=(80, 24)) as pilot:
        await showing(BY_KEY)(pilot)
        grid = app.query_one("#usage-table", DataTable)
        assert [row[-1] for row in cells(app)] == ["1,800", "410", "1,900", "0.9", "1,800"]
        assert [row[0] for row in cells(app)][:3] == ["…Q7xa", "…b_9K", "…mm2P"]
        assert grid.virtual_size.width <= grid.scrollable_content_region.width
        assert not grid.show_horizontal_scrollbar


def test_look_by_user_80x24(snap_compare: Any) -> None:
    assert snap_compare(canned(), terminal_size=(80, 24), run_before=showing(BY_USER))


def test_look_by_user_120x40(snap_compare: Any) -> None:
    assert snap_compare(canned(), terminal_size=(120, 40), run_before=showing(BY_USER))


def test_look_by_key_charting_tokens_120x40(snap_compare: Any) -> None:
    run_before = showing(BY_KEY, "m")
    assert snap_compare(canned(), terminal_size=(120, 40), run_before=run_before)


def test_look_by_day_80x24(snap_compare: Any) -> None:
    assert snap_compare(canned(), terminal_size=(80, 24), run_before=showing(BY_DAY))
