"""The dashboard of `llmgw-tui`: against a real gateway, and its look in SVG snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from llmgw.api_types import BudgetView, BusyKey, LimitsView, Rate, Stats, StatsTotals, WindowBudget
from llmgw.config import RoutingSettings
from llmgw.fake_vllm import FakeVLLM
from tui.app import LlmgwTui
from tui.banner import ConnectionBanner
from tui.busiest_keys import WIDE, BusiestKeys, compact
from tui.dashboard import DashboardPane
from tui.metric import MetricPanel
from tui.rate_sparkline import RateSparkline, seconds_per_bar
from tui.upstream_table import UpstreamTable

from .busy import LOAD, RUNNING, WAITING, busy_upstream
from .conftest import Gateway, GatewayFactory, post_chat, tiers

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
SNAPSHOT_SOCKET = Path("/run/llmgw/admin.sock")


# --- against a real gateway -------------------------------------------------------------


async def chat(http: aiohttp.ClientSession, gateway: Gateway, key: str, **body: Any) -> int:
    return await post_chat(http, gateway, key, CHAT | body)


async def until(pilot: Pilot[None], done: Callable[[], bool], what: str) -> None:
    """Let the app run until `done()` (bounded: the stats tick once a second)."""
    try:
        async with asyncio.timeout(10):
            while not done():
                await pilot.pause(0.1)
    except TimeoutError:
        raise AssertionError(f"the dashboard never showed {what}") from None


def cells(table: DataTable[Any], row_key: str) -> dict[str, str]:
    """A row as the user reads it: column key -> text."""
    if row_key not in table.rows:
        return {}
    return {
        str(column.key.value): str(cell)
        for column, cell in zip(table.ordered_columns, table.get_row(row_key), strict=True)
    }


def panel(app: LlmgwTui, panel_id: str) -> MetricPanel:
    return app.query_one(f"#metric-{panel_id}", MetricPanel)


async def test_the_dashboard_follows_real_traffic(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(DashboardPane)
        await until(pilot, lambda: not pane.waiting, "the first snapshot")
        assert panel(app, "requests").value == "0/s"
        assert panel(app, "errors").value == "0 in 60 s"
        upstream = cells(app.query_one(UpstreamTable), gateway.settings.upstreams[0].url)
        assert upstream["health"] == "up"
        assert "fake-model" in upstream["detail"]

        key = await gateway.create_key("alice", tier="premium")
        for _ in range(3):
            assert await chat(http, gateway, key["key"]) == 200
        assert await chat(http, gateway, key["key"], model="no-such-model") == 404

        keys = app.query_one(BusiestKeys)
        row_key = str(key["id"])
        await until(pilot, lambda: cells(keys, row_key).get("errors") == "1", "alice's 404")
        row = cells(keys, row_key)
        # The `sk-internal-` every key shares is left off.
        assert (row["user"], row["key"], row["tier"]) == (
            "alice",
            "…" + key["key"][12:16],
            "premium",
        )
        assert float(row["rps"]) > 0
        assert float(row["tps"]) > 0
        # Four requests spent, some already back (premium: one every 0.6 s, 3.6 s)
        minute, hour = (tuple(map(int, row[w].split("/"))) for w in ("minute", "hour"))
        assert 96 <= minute[0] < 100
        assert minute[1] == 100
        assert 996 <= hour[0] < 1000
        assert hour[1] == 1000
        assert row["flight"].split("/")[0] == "0"  # all four answered
        assert panel(app, "requests").value != "0/s"
        assert float(panel(app, "requests").value.removesuffix("/s")) > 0
        assert panel(app, "errors").value == "1 in 60 s"
        assert panel(app, "errors").has_class("-alert")
        assert panel(app, "limited").value == "0 in 60 s"
        # The sparklines take a second once it is over.
        sparkline = panel(app, "requests").query_one(RateSparkline)
        await until(pilot, lambda: sum(sparkline.values) == 4, "the requests in the sparkline")
        assert sum(panel(app, "errors").query_one(RateSparkline).values) == 1
        now = str(app.query_one("#now", Static).visual)
        assert now.startswith("in flight 0 · streams 0 · active keys 1 · charts: last 5 min")


async def test_a_429_shows_in_its_panel_and_in_the_keys_budget(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(tiers=tiers(free=(1, 100)))
    key = await gateway.create_key("bob", tier="free")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(80, 24)) as pilot:
        assert await chat(http, gateway, key["key"]) == 200
        assert await chat(http, gateway, key["key"]) == 429
        limited = panel(app, "limited")
        await until(pilot, lambda: limited.value == "1 in 60 s", "the 429")
        assert limited.has_class("-alert")
        keys = app.query_one(BusiestKeys)
        await until(pilot, lambda: cells(keys, str(key["id"])).get("limited") == "1", "bob's 429")
        row = cells(keys, str(key["id"]))
        # 80 columns: what is left without the limit; a refused request is free
        assert (row["user"], row["key"]) == ("bob", "…" + key["key"][12:16])
        assert (row["minute"], row["hour"]) == ("0", "99")
        assert keys.get_cell(str(key["id"]), "minute").style == "bold red"  # spent


async def test_the_upstream_table_shows_vllms_load_and_a_full_upstream(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    # Two waiting is more than it may have: passed over while another has room.
    gateway: Gateway = await gateway_factory(routing=RoutingSettings(max_waiting=1))
    url = gateway.settings.upstreams[0].url
    app = LlmgwTui(gateway.socket_path)
    async with busy_upstream(gateway, fake), app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(UpstreamTable)

        def shown(wide: bool) -> bool:
            # (The table is laid out once the first snapshot shows the board: until then
            # it has no width, and the narrow layout.)
            row = cells(table, url)
            return row.get("waiting") == str(WAITING) and ("latency" in row) == wide

        await until(pilot, lambda: shown(wide=True), "vLLM's load")
        row = cells(table, url)
        assert row.pop("latency").endswith(" ms")
        assert row == {
            "url": url,
            "health": "full",
            "in_flight": str(LOAD),
            "load": str(LOAD),
            "waiting": str(WAITING),
            "running": str(RUNNING),
            "kv_cache": "42%",
            "prefix_hits": "25%",
            "detail": "fake-model",
        }
        assert table.get_cell(url, "health").style == "bold yellow"

        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: shown(wide=False), "the narrow layout")
        # Narrow: no latency nor in flight (the load counts those where vLLM's figures are
        # unknown), and the URL without its http://.
        assert cells(table, url) == {
            "url": url.removeprefix("http://"),
            "health": "full",
            "load": str(LOAD),
            "waiting": str(WAITING),
            "running": str(RUNNING),
            "kv_cache": "42%",
            "prefix_hits": "25%",
            "detail": "fake-model",
        }


async def test_without_a_gateway_the_dashboard_waits_and_says_so(tmp_path: Path) -> None:
    app = LlmgwTui(tmp_path / "no-gateway.sock")
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.query_one(ConnectionBanner)
        await until(pilot, lambda: banner.has_class("-lost"), "the lost connection")
        pane = app.query_one(DashboardPane)
        assert pane.waiting
        assert pane.query_one("#waiting").display
        assert not pane.query_one("#board").display


# --- in place, second after second ------------------------------------------------------


async def test_the_keys_cursor_stays_on_its_key_from_tick_to_tick() -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        pane, keys = app.query_one(DashboardPane), app.query_one(BusiestKeys)
        snapshot = canned_snapshot()
        pane.show(snapshot)
        await pilot.pause()
        keys.focus()
        await pilot.press("down", "down")
        assert keys.cursor_row == 2  # on key 7
        snapshot["keys"][2]["errors"] = 5
        pane.show(snapshot)  # the same ranking: cells change in place
        await pilot.pause()
        assert keys.cursor_row == 2
        assert cells(keys, "7")["errors"] == "5"
        snapshot["keys"].insert(0, snapshot["keys"].pop(2))  # key 7 is now the busiest
        pane.show(snapshot)
        await pilot.pause()
        assert keys.cursor_row == 0
        assert [str(row.value) for row in keys.rows] == ["7", "12", "31", "44", "3", "9", "27"]


async def test_the_keys_limits_show_what_is_left_of_each() -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(DashboardPane).show(canned_snapshot())
        await pilot.pause()
        keys = app.query_one(BusiestKeys)
        limit_columns = ("flight", "minute", "hour", "tokens", "budget")

        def limits(key_id: int) -> tuple[str, ...]:
            row = cells(keys, str(key_id))
            return tuple(row[c] for c in limit_columns)

        assert limits(12) == ("1/8", "31/100", "418/1000", "12k/20k", "3.2M/5M month")
        # No in-flight limit: its open streams, faint. The user's budget binds.
        assert limits(31) == ("1", "21/30", "97/300", "—", "840k/1M week")
        assert limits(7) == ("0/8", "83/100", "866/1000", "19k/20k", "1.5k/200k day")
        assert limits(44) == ("2/2", "0/10", "29/100", "0/5k", "0/100k day")
        assert limits(27) == ("0", "30/30", "295/300", "—", "—")
        assert limits(9) == ("-",) * 5  # deleted: nothing known
        spent = keys.get_row("44")
        assert [c.style for c in spent[-5:]] == ["bold red", "bold red", "", "bold red", "bold red"]
        assert cells(keys, "12")["tier"] == "premium"
        assert cells(keys, "12")["key"] == "…V012"

        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        # Narrow: what is left without the limit, the period short; no tier, no errors
        # (the keys tab has the tier, the errors panel the errors; with them the table
        # would be 81 cells wide).
        assert limits(12) == ("1/8", "31", "418", "12k", "3.2M mo")
        assert limits(31) == ("1", "21", "97", "—", "840k wk")
        assert limits(7) == ("0/8", "83", "866", "19k", "1.5k d")
        assert "tier" not in cells(keys, "12") and "errors" not in cells(keys, "12")
        assert keys.virtual_size.width <= keys.scrollable_content_region.width


async def test_the_busiest_keys_fit_the_width_either_way() -> None:
    """Just above the wide layout's threshold and at 80 columns, no sideways scrolling."""
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    async with app.run_test(size=(WIDE, 40)) as pilot:
        app.query_one(DashboardPane).show(canned_snapshot())
        await pilot.pause()
        keys = app.query_one(BusiestKeys)
        assert "tier" in cells(keys, "12")
        assert keys.virtual_size.width <= keys.scrollable_content_region.width
        await pilot.resize_terminal(80, 12)  # few lines: a vertical scrollbar too
        await pilot.pause()
        assert "tier" not in cells(keys, "12")
        assert keys.virtual_size.width <= keys.scrollable_content_region.width


async def test_the_upstream_table_fits_the_width_either_way() -> None:
    """Wide, every column; at 80 columns the load and the start of the models, with no
    sideways scrolling."""
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(DashboardPane).show(canned_snapshot())
        await pilot.pause()
        table = app.query_one(UpstreamTable)
        gpu1, gpu2 = "http://gpu1.internal:8100", "http://gpu2.internal:8100"
        up = cells(table, gpu1)
        assert up.pop("detail").startswith("meta-llama/Llama-3.1-8B")
        assert up == {
            "url": gpu1,
            "health": "up",
            "latency": "12 ms",
            "in_flight": "3",
            "load": "9",
            "waiting": "2",
            "running": "7",
            "kv_cache": "41%",
            "prefix_hits": "63%",
        }
        # Down: its metrics are not read; its load is this gateway's in flight (none).
        down = cells(table, gpu2)
        assert [down[c] for c in ("health", "latency", "load", "waiting", "kv_cache")] == [
            "DOWN", "-", "0", "-", "-",
        ]  # fmt: skip
        assert table.virtual_size.width <= table.scrollable_content_region.width

        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert list(cells(table, gpu1)) == [
            "url", "health", "load", "waiting", "running", "kv_cache", "prefix_hits", "detail",
        ]  # fmt: skip
        assert cells(table, gpu1)["detail"].endswith("…")
        assert table.virtual_size.width <= table.scrollable_content_region.width


def test_compact_counts_never_show_more_than_there_is() -> None:
    assert [compact(n) for n in (0, 950, 1_000, 1_999, 12_999, 999_999, 1_500_000)] == [
        "0", "950", "1k", "1.9k", "12k", "999k", "1.5M",
    ]  # fmt: skip


async def test_the_four_charts_bars_stand_for_the_same_seconds() -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    async with app.run_test(size=(80, 24)) as pilot:  # the two columns differ by one
        app.query_one(DashboardPane).show(canned_snapshot())
        await pilot.pause()
        sparklines = list(app.query(RateSparkline))
        assert len({s.size.width for s in sparklines}) == 2
        per = {s.per_bar for s in sparklines}
        assert len(per) == 1
        assert per != {0}
        assert f", {per.pop()} s a bar" in str(app.query_one("#now", Static).visual)


def test_a_bar_is_a_fixed_run_of_seconds_so_the_line_does_not_shimmer() -> None:
    sparkline = RateSparkline()
    series = [i % 7 for i in range(1000, 1300)]
    sparkline.plot(series[:-1], 1000)
    # 299 seconds over 30 columns: 10 seconds a bar, bars start at whole tens
    assert seconds_per_bar(299, 30) == 10
    before = sparkline.bars(30)
    assert before[-2] == sum(series[280:290]) / 10
    assert before[-1] == sum(series[290:299]) / 9  # the newest bar, still filling
    sparkline.plot(series[1:], 1001)  # a second later
    after = sparkline.bars(30)
    # Only the newest bar (its seconds fill up) and the oldest (its leave the window)
    assert after[1:-1] == before[1:-1]
    assert after[0] == sum(series[1:10]) / 9
    assert after[-1] == sum(series[290:300]) / 10
    assert RateSparkline().bars(30) == []


# --- a canned snapshot: five minutes of a morning's traffic ----------------------------

NOW = 1767268800.4  # 2026-01-01 12:00:00.4 UTC
SECONDS = 300
START = int(NOW) - SECONDS + 1


def _requests(i: int) -> int:
    """Requests finished in second `i` of the window: a slow climb, jitter, one burst."""
    burst = 9 if 196 <= i < 214 else 0
    return max(0, 1 + i // 75 + (i * 7) % 5 - 2 + burst)


def _canned_total() -> StatsTotals:
    requests = [_requests(i) for i in range(SECONDS)]
    requests[-1] = 1  # the current second has only begun
    prompt = [r * 90 + (i * 13) % 40 * (r > 0) for i, r in enumerate(requests)]
    completion = [r * 55 + (i * 29) % 50 * (r > 0) for i, r in enumerate(requests)]
    errors = [0] * SECONDS
    for i, n in ((41, 1), (42, 1), (133, 1), (205, 2), (206, 1), (271, 1)):
        errors[i] = n
    # bob's free tier running dry in the burst, and again a minute ago
    limited = [int(196 <= i < 214 and i % 2 == 0) + int(240 <= i < 250) for i in range(SECONDS)]
    return {
        "tokens": [p + c for p, c in zip(prompt, completion, strict=True)],
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "errors": errors,
        "rate_limited": limited,
        "streams": 2,
        "in_flight": 3,
    }


def _rate(total: StatsTotals, span: int) -> Rate:
    """What `LiveStats` reports over the last `span` slots (the newest 0.4 s old)."""
    elapsed = span - 1 + round(NOW % 1, 3)
    requests, tokens = sum(total["requests"][-span:]), sum(total["tokens"][-span:])
    return {
        "requests": requests,
        "tokens": tokens,
        "errors": sum(total["errors"][-span:]),
        "rate_limited": sum(total["rate_limited"][-span:]),
        "requests_per_s": round(requests / elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 3),
    }


def _left(left_limit: tuple[int, int], reset_s: float) -> WindowBudget:
    return {"limit": left_limit[1], "remaining": left_limit[0], "reset_s": reset_s}


def _budget(left_limit: tuple[int, int] | None, period: Any) -> BudgetView | None:
    if left_limit is None:
        return None
    left, limit = left_limit
    renews = {"day": "2026-01-02", "week": "2026-01-05", "month": "2026-02-01"}[period]
    return {
        "limit": limit,
        "used": limit - left,
        "remaining": left,
        "period": period,
        "renews_at": f"{renews}T00:00:00.000Z",
    }


LONG_USER = "marie-claire.dubois@example.com"  # too long for the column, at any width
BUSIEST: tuple[tuple[Any, ...], ...] = (
    # id, user, tier, req/s, tok/s, requests, errors, 429s, streams, left/minute, left/hour
    (12, "alice", "premium", 1.7, 271.4, 402, 2, 0, 1, (31, 100), (418, 1000)),
    (31, "ci-nightly", "standard", 0.9, 160.2, 188, 0, 0, 1, (21, 30), (97, 300)),
    (7, LONG_USER, "premium", 0.6, 95.5, 131, 1, 0, 0, (83, 100), (866, 1000)),
    (44, "bob", "free", 0.3, 41.0, 71, 0, 19, 2, (0, 10), (29, 100)),
    (3, "dev-team", "premium", 0.2, 38.9, 64, 3, 0, 0, (98, 100), (935, 1000)),
    (9, None, None, 0.1, 12.0, 18, 0, 0, 0, None, None),  # deleted since, still counted
    (27, "eval-harness", "standard", 0.0, 0.0, 5, 0, 0, 0, (30, 30), (295, 300)),
)
# Each key's other limits: in flight (current, limit), tokens left this minute, its own
# budget and its user's, each (left, limit) and a period; None where it has no such limit.
OTHER_LIMITS: dict[int, tuple[Any, ...]] = {
    12: ((1, 8), (12_400, 20_000), ((3_250_000, 5_000_000), "month"), (None, None)),
    # ci-nightly's user budget is the one that binds
    31: (None, None, (None, None), ((840_000, 1_000_000), "week")),
    # the key's budget is far from spent, its user's nearly
    7: ((0, 8), (19_100, 20_000), ((4_900_000, 5_000_000), "month"), ((1_500, 200_000), "day")),
    # bob: at every limit at once
    44: ((2, 2), (0, 5_000), ((0, 100_000), "day"), (None, None)),
    3: ((0, 8), (20_000, 20_000), (None, None), (None, None)),
    27: (None, None, (None, None), (None, None)),
}


def _limits(key_id: int, minute: tuple[int, int], hour: tuple[int, int]) -> LimitsView:
    in_flight, tokens, (key_budget, key_period), (user_budget, user_period) = OTHER_LIMITS[key_id]
    return {
        "requests_per_minute": _left(minute, 0.6),
        "requests_per_hour": _left(hour, 3.6),
        "tokens_per_minute": None if tokens is None else _left(tokens, 0.4),
        "tokens_per_day": None,
        "in_flight": None
        if in_flight is None
        else {"current": in_flight[0], "limit": in_flight[1]},
        "key_budget": _budget(key_budget, key_period),
        "user_budget": _budget(user_budget, user_period),
    }


def _key(row: tuple[Any, ...]) -> BusyKey:
    key_id, user, tier, rps, tps, requests, errors, limited, streams, minute, hour = row
    tokens = round(requests * tps / max(rps, 0.1))
    return {
        "key_id": key_id,
        "requests_per_s": rps,
        "tokens_per_s": tps,
        "requests": requests,
        "tokens": tokens,
        "prompt_tokens": tokens * 3 // 5,
        "completion_tokens": tokens - tokens * 3 // 5,
        "errors": errors,
        "rate_limited": limited,
        "streams": streams,
        # a deleted key is known by its id only
        "key_prefix": None if user is None else f"sk-internal-{'QxZaVbKc'[key_id % 8]}{key_id:03d}",
        "user_id": user,
        "tier": tier,
        "limits": None if minute is None else _limits(key_id, minute, hour),
    }


def canned_snapshot() -> Stats:
    total = _canned_total()
    return {
        "replica": "gw-a:8000",
        "now": NOW,
        "window": SECONDS,
        "seconds": SECONDS,
        "start": START,
        "total": total,
        "rates": {"10s": _rate(total, 10), "60s": _rate(total, 60)},
        "keys_active": 7,
        "keys": [_key(row) for row in BUSIEST],
        "upstreams": [
            {
                "url": "http://gpu1.internal:8100",
                "healthy": True,
                "in_flight": 3,
                "latency_ms": 11.73,
                "models": ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"],
                "last_error": None,
                "checked_at": "2026-01-01T11:59:58Z",
                "load": 9.0,
                "waiting": 2,
                "running": 7,
                "kv_cache_usage": 0.41,
                "prefix_cache_hit_rate": 0.6312,
                "full": False,
            },
            {
                "url": "http://gpu2.internal:8100",
                "healthy": False,
                "in_flight": 0,
                "latency_ms": 14.2,
                "models": ["meta-llama/Llama-3.1-8B-Instruct"],
                "last_error": "Cannot connect to host gpu2.internal:8100 ssl:default "
                "[Connect call failed ('10.0.4.12', 8100)]",
                "checked_at": "2026-01-01T11:59:58Z",
                "load": 0.0,
                "waiting": None,
                "running": None,
                "kv_cache_usage": None,
                "prefix_cache_hit_rate": None,
                "full": False,
            },
            {  # more waiting than [routing] max_waiting: passed over while gpu1 has room
                "url": "http://gpu3.internal:8100",
                "healthy": True,
                "in_flight": 12,
                "latency_ms": 9.4,
                "models": ["meta-llama/Llama-3.1-8B-Instruct"],
                "last_error": None,
                "checked_at": "2026-01-01T11:59:58Z",
                "load": 106.0,
                "waiting": 41,
                "running": 64,
                "kv_cache_usage": 0.974,
                "prefix_cache_hit_rate": 0.0815,
                "full": True,
            },
        ],
        # all written: no ledger line
        "ledger": {
            "pending": 0,
            "written": 5_213,
            "dropped": 0,
            "rejected": 0,
            "failed_writes": 0,
            "last_error": None,
        },
    }


def show_canned(pilot: Pilot[None]) -> None:
    pilot.app.query_one(DashboardPane).show(canned_snapshot())


# --- the look ---------------------------------------------------------------------------


def test_look_80x24(snap_compare: Callable[..., bool]) -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    assert snap_compare(app, terminal_size=(80, 24), run_before=show_canned)


def test_look_120x40(snap_compare: Callable[..., bool]) -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    assert snap_compare(app, terminal_size=(120, 40), run_before=show_canned)


def test_look_waiting(snap_compare: Callable[..., bool]) -> None:
    app = LlmgwTui(SNAPSHOT_SOCKET, live=False)
    assert snap_compare(app, terminal_size=(80, 24))
