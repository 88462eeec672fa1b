"""`/stats`, `/stats/stream` and `llmgw status` against a real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cli.status import limit_cells, upstream_cells
from llmgw.admin_client import AdminApiError, AdminClient
from llmgw.api_types import BusyKey, Stats
from llmgw.config import RoutingSettings, load_settings
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import METRICS

from .busy import KV_CACHE_USAGE, LOAD, RUNNING, WAITING, busy_upstream
from .conftest import Gateway, GatewayFactory
from .conftest import run_llmgw as llmgw
from .test_tui_dashboard import canned_snapshot

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
PASSWORD = "correct horse battery staple"


def key_row(snapshot: Stats, key_id: int) -> BusyKey:
    rows = [k for k in snapshot["keys"] if k["key_id"] == key_id]
    assert len(rows) == 1, f"key {key_id} is not among {snapshot['keys']}"
    return rows[0]


# --- through a running gateway ---------------------------------------------------------


async def chat(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, **body: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        json=CHAT | body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


async def stats_until(gateway: Gateway, done: Callable[[Stats], bool], seconds: int = 300) -> Stats:
    """The first `/stats` answer that satisfies `done` (polled, within 5 s)."""
    async with gateway.admin() as admin, asyncio.timeout(5):
        while True:
            snap = await admin.stats(seconds)
            if done(snap):
                return snap
            await asyncio.sleep(0.02)


def window_requests(snap: Stats) -> int:
    return sum(snap["total"]["requests"])


async def test_requests_move_the_numbers_of_the_right_key(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    alice = await gateway.create_key("alice", tier="premium")
    bob = await gateway.create_key("bob", tier="free")
    tokens = 0
    for _ in range(3):
        status, answer = await chat(http, gateway, alice["key"])
        assert status == 200
        tokens += answer["usage"]["total_tokens"]
    assert (await chat(http, gateway, bob["key"]))[0] == 200

    snap = await stats_until(gateway, lambda s: window_requests(s) == 4)
    assert snap["seconds"] == snap["window"] == 300
    assert len(snap["total"]["requests"]) == 300
    assert sum(snap["total"]["errors"]) == sum(snap["total"]["rate_limited"]) == 0
    assert snap["rates"]["60s"]["requests"] == 4
    assert snap["rates"]["10s"]["requests_per_s"] > 0
    assert snap["total"]["in_flight"] == 0
    assert snap["total"]["streams"] == 0
    assert snap["keys_active"] == 2
    row = key_row(snap, alice["id"])
    assert snap["keys"][0] is row  # busiest first
    assert (row["user_id"], row["tier"]) == ("alice", "premium")
    assert row["key_prefix"] == alice["key"][:16]
    assert (row["requests"], row["tokens"], row["errors"]) == (3, tokens, 0)
    assert row["limits"] is not None
    minute, hour = row["limits"]["requests_per_minute"], row["limits"]["requests_per_hour"]
    assert (minute["limit"], minute["remaining"]) == (100, 97)
    assert (hour["limit"], hour["remaining"]) == (1000, 997)
    bob_row = key_row(snap, bob["id"])
    assert (bob_row["user_id"], bob_row["requests"]) == ("bob", 1)
    assert bob_row["limits"] is not None
    assert bob_row["limits"]["requests_per_minute"] == {
        "limit": 10,
        "remaining": 9,
        "reset_s": pytest.approx(6, abs=1),  # one request back every 6 s
    }
    assert [u["url"] for u in snap["upstreams"]] == [gateway.settings.upstreams[0].url]
    assert snap["upstreams"][0]["healthy"] is True


async def test_a_429_is_rate_limited_and_an_unknown_model_is_an_error(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key("carol", requests_per_minute=2)
    assert (await chat(http, gateway, key["key"], model="no-such-model"))[0] == 404
    # The 404 was answered before admission: both requests of the minute are left.
    assert (await chat(http, gateway, key["key"]))[0] == 200
    assert (await chat(http, gateway, key["key"]))[0] == 200
    assert (await chat(http, gateway, key["key"]))[0] == 429
    snap = await stats_until(gateway, lambda s: window_requests(s) == 4)
    assert sum(snap["total"]["errors"]) == 1
    assert sum(snap["total"]["rate_limited"]) == 1
    row = key_row(snap, key["id"])
    assert (row["requests"], row["errors"], row["rate_limited"]) == (4, 1, 1)
    assert row["limits"] is not None
    assert row["limits"]["requests_per_minute"]["remaining"] == 0


async def test_a_deleted_key_still_shows_by_id(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key("dave")
    assert (await chat(http, gateway, key["key"]))[0] == 200
    async with gateway.admin() as admin:
        await admin.delete_key(key["id"])
    snap = await stats_until(gateway, lambda s: window_requests(s) == 1)
    row = key_row(snap, key["id"])
    assert row["requests"] == 1
    assert (row["user_id"], row["tier"], row["key_prefix"], row["limits"]) == (None,) * 4


# Needs issue 15's server side: keys created with the new limits, and the limiter
# reporting them.
async def test_a_busy_keys_limits_show_what_is_left_of_each(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(
        "erin",
        tokens_per_minute=5_000,
        tokens_per_day=0,  # none for this key, whatever the tier says
        max_in_flight=3,
        budget_tokens=100_000,
        budget_period="day",
    )
    tokens = 0
    for _ in range(2):
        status, answer = await chat(http, gateway, key["key"])
        assert status == 200
        tokens += answer["usage"]["total_tokens"]
    snap = await stats_until(gateway, lambda s: window_requests(s) == 2)
    limits = key_row(snap, key["id"])["limits"]
    assert limits is not None
    assert limits["tokens_per_day"] is None
    assert limits["in_flight"] == {"limit": 3, "current": 0}  # both answered
    per_minute = limits["tokens_per_minute"]
    assert per_minute is not None
    assert per_minute["limit"] == 5_000
    assert 0 <= per_minute["remaining"] <= 5_000 - tokens
    budget = limits["key_budget"]
    assert budget is not None
    assert (budget["limit"], budget["used"], budget["period"]) == (100_000, tokens, "day")
    assert budget["remaining"] == 100_000 - tokens
    assert budget["renews_at"].endswith("T00:00:00.000Z")  # the next day, UTC
    assert limits["user_budget"] is None


async def test_an_open_stream_shows_while_it_is_open(
    gateway: Gateway, api_key: str, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    fake.behaviour.token_delay = 0.05
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        json=CHAT | {"max_tokens": 40, "stream": True},
        headers={"Authorization": f"Bearer {api_key}"},
    ) as resp:
        assert resp.status == 200
        await resp.content.readany()
        snap = await stats_until(gateway, lambda s: s["total"]["streams"] == 1)
        assert [(k["user_id"], k["streams"], k["requests"]) for k in snap["keys"]] == [
            ("alice", 1, 0)  # counted as a request once it finishes
        ]
        body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")
    snap = await stats_until(
        gateway, lambda s: s["total"]["streams"] == 0 and window_requests(s) == 1
    )
    assert [(k["streams"], k["requests"], k["completion_tokens"]) for k in snap["keys"]] == [
        (0, 1, 40)
    ]


async def test_stats_stream_is_sse_ticking_every_second(gateway: Gateway) -> None:
    snapshots: list[tuple[float, dict[str, Any]]] = []
    connector = aiohttp.UnixConnector(path=str(gateway.socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://llmgw/stats/stream?seconds=10") as resp,
        asyncio.timeout(5),
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        while len(snapshots) < 3:
            event = await resp.content.readuntil(b"\n\n")
            assert event.startswith(b"data: {")
            snapshots.append((time.monotonic(), orjson.loads(event[6:])))
    (t0, first), (t1, second), (t2, third) = snapshots
    assert first["now"] < second["now"] < third["now"]
    assert 0.5 <= t1 - t0 <= 1.6  # the first tick waits for a whole second to turn
    assert 0.8 <= t2 - t1 <= 1.2
    assert third["now"] % 1 < 0.3  # ticks follow the wall clock's seconds
    assert third["seconds"] == len(third["total"]["requests"]) == 10
    assert third["start"] == int(third["now"]) - 9
    assert "in_flight" in third["total"]
    assert third["upstreams"]


async def stop_within(gateway: Gateway, seconds: float, stream: Any) -> float:
    """How long the gateway took to stop with `stream` open; fails past `seconds`,
    and unless the client then sees the stream end cleanly."""
    started = time.monotonic()
    stopping = asyncio.create_task(gateway.runner.cleanup())
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        # Let it finish (the stream's client goes away) before failing, so the
        # gateway's resources are not left half torn down.
        with contextlib.suppress(Exception):
            await stream.aclose()
        await stopping
        pytest.fail(f"an open /stats/stream held the shutdown for over {seconds} s")
    await stopping
    elapsed = time.monotonic() - started
    async with asyncio.timeout(2):
        rest = [snap async for snap in stream]  # no GatewayUnreachable: a clean end
    assert len(rest) <= 1
    return elapsed


async def test_an_open_stats_stream_does_not_hold_up_shutdown(gateway: Gateway) -> None:
    async with gateway.admin() as admin:
        stream = admin.stream_stats(seconds=5)
        async with asyncio.timeout(5):
            await anext(stream)
        await stop_within(gateway, 3.0, stream)
    assert not gateway.socket_path.exists()


async def test_a_remote_stats_stream_does_not_hold_up_shutdown(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    # Only the secret changes: the admin socket stays where the isolation put it.
    admin_settings = dataclasses.replace(load_settings(None).admin, secret_key="s" * 32)
    gateway: Gateway = await gateway_factory(admin=admin_settings)
    assert gateway.socket_path.is_relative_to(tmp_path)
    async with gateway.admin() as admin:
        await admin.add_admin("ops", PASSWORD)
    async with AdminClient(url=gateway.url) as anonymous:
        token = (await anonymous.login("ops", PASSWORD))["access_token"]
    async with AdminClient(url=gateway.url, token=token) as remote:
        assert (await remote.stats(60))["seconds"] == 60
        stream = remote.stream_stats(seconds=5)
        async with asyncio.timeout(5):
            await anext(stream)
        # The public door's shutdown would wait its grace period (2 s here) for it.
        assert await stop_within(gateway, 1.5, stream) < 1.5
    assert gateway.app[METRICS].in_flight == 0


@pytest.mark.parametrize("seconds", ["0", "301", "-1", "ten", "1.5"])
async def test_bad_seconds_are_400_naming_the_parameter(gateway: Gateway, seconds: Any) -> None:
    async with gateway.admin() as admin:
        with pytest.raises(AdminApiError) as stats_error:
            await admin.stats(seconds)
        with pytest.raises(AdminApiError) as stream_error:
            async with asyncio.timeout(5):
                await anext(admin.stream_stats(seconds))
    for error in (stats_error.value, stream_error.value):
        assert error.status == 400
        assert error.param == "seconds"
        assert "1 to 300" in error.message


# --- llmgw status ---------------------------------------------------------------------------


async def test_status_text_and_json(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.create_key("frank", tier="standard")
    for _ in range(2):
        assert (await chat(http, gateway, key["key"]))[0] == 200
    assert (await chat(http, gateway, key["key"], model="nope"))[0] == 404
    await stats_until(gateway, lambda s: window_requests(s) == 3)
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("gateway    ok")
    # Which replica's live figures these are: HOST:PORT unless [server] replica_name.
    assert lines[1].startswith(f"replica    {gateway.settings.replica} ")
    upstream = next(line for line in lines if line.startswith(gateway.settings.upstreams[0].url))
    assert upstream.split()[1] == "yes"
    assert "fake-model" in upstream
    assert "errors     1" in lines
    assert "429s       0" in lines
    keys = next(line for line in lines if line.startswith("keys       "))
    # On SQLite there is nothing to listen to; the key's change is read back within an
    # interval (version 0 until then: applied on commit, not yet read from the log).
    assert keys.startswith("keys       1 known, version ")
    assert keys.endswith(" s ago")
    assert any(line.startswith("requests   ") and "3 in all" in line for line in lines)
    frank = busy_key_row(lines, "frank")
    assert [frank[c] for c in ("ID", "PREFIX", "USER", "TIER")] == [
        str(key["id"]), key["key"][:16], "frank", "standard",
    ]  # fmt: skip
    # The 404 was answered before admission: it cost nothing.
    assert (frank["LEFT/MIN"], frank["LEFT/HOUR"]) == ("28/30", "298/300")
    assert "Traceback" not in out + err

    code, out, err = await llmgw("--socket", str(gateway.socket_path), "status", "--json")
    assert code == 0, err
    report = orjson.loads(out)  # the whole of stdout is one JSON document
    assert set(report) == {"health", "stats"}
    assert report["health"]["status"] == "ok"
    assert report["health"]["keys"] | {"synced_s_ago": 0, "version": 0} == {
        "count": 1, "version": 0, "synced_s_ago": 0, "listening": False, "error": None,
    }  # fmt: skip
    assert report["stats"]["seconds"] == 60
    assert report["stats"]["rates"]["60s"]["errors"] == 1
    assert [(k["user_id"], k["requests"]) for k in report["stats"]["keys"]] == [("frank", 3)]


def busy_key_row(lines: list[str], user: str) -> dict[str, str]:
    """The user's row of the busiest keys, header -> cell (cells are two spaces apart)."""
    return table_row(lines, "ID ", f"  {user}  ")


def table_row(lines: list[str], header_start: str, row_part: str) -> dict[str, str]:
    """The row holding `row_part` of the table whose header line begins `header_start`,
    header -> cell (cells are two spaces apart)."""
    header = next(line for line in lines if line.startswith(header_start))
    row = next(line for line in lines if row_part in line)
    return dict(zip(re.split(r" {2,}", header), re.split(r" {2,}", row), strict=True))


LOAD_FIELDS = (
    "url", "load", "waiting", "running", "kv_cache_usage", "prefix_cache_hit_rate", "full",
)  # fmt: skip


async def test_status_shows_vllms_load_and_marks_a_full_upstream(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    # Two waiting is more than it may have: passed over while another has room.
    gateway: Gateway = await gateway_factory(routing=RoutingSettings(max_waiting=1))
    url = gateway.settings.upstreams[0].url
    async with busy_upstream(gateway, fake):
        code, out, err = await llmgw("--socket", str(gateway.socket_path), "status")
        assert code == 0, err
        json_code, json_out, err = await llmgw(
            "--socket", str(gateway.socket_path), "status", "--json"
        )
        assert json_code == 0, err
    row = table_row(out.splitlines(), "UPSTREAM ", url)
    assert row.pop("LATENCY").endswith(" ms")
    assert row == {
        "UPSTREAM": url,
        "HEALTHY": "yes (full)",
        "IN FLIGHT": str(LOAD),
        "LOAD": str(LOAD),
        "WAITING": str(WAITING),
        "RUNNING": str(RUNNING),
        "KV CACHE": "42%",
        "PREFIX HITS": "25%",
        "MODELS": "fake-model",
        "LAST ERROR": "-",
    }
    report = orjson.loads(json_out)
    # The admin API's fields as they are, in /health's and in /stats' upstreams alike.
    for upstreams in (report["health"]["upstreams"], report["stats"]["upstreams"]):
        assert [{k: u[k] for k in LOAD_FIELDS} for u in upstreams] == [
            {
                "url": url,
                "load": LOAD,
                "waiting": WAITING,
                "running": RUNNING,
                "kv_cache_usage": KV_CACHE_USAGE,
                "prefix_cache_hit_rate": 0.25,
                "full": True,
            }
        ]


def test_status_shows_a_dash_for_what_vllm_did_not_say() -> None:
    """From a typed snapshot: an upstream up, one down (its /metrics not read) and one full."""
    up, down, full = (upstream_cells(u) for u in canned_snapshot()["upstreams"])
    # LATENCY to LAST ERROR
    assert up[2:] == [
        "11.73 ms", "3", "9", "2", "7", "41%", "63%",
        "meta-llama/Llama-3.1-8B-Instruct, Qwen/Qwen2.5-7B-Instruct", "-",
    ]  # fmt: skip
    assert down[1] == "NO"
    # Its load is this gateway's requests in flight there; vLLM's figures are unknown.
    assert down[3:9] == ["0", "0", "-", "-", "-", "-"]
    assert full[1:2] + full[4:9] == ["yes (full)", "106", "41", "64", "97%", "8%"]


# Needs issue 15's server side, as above.
async def test_status_shows_what_is_left_of_every_limit(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(
        "grace",
        tokens_per_minute=4_000,
        max_in_flight=2,
        budget_tokens=50_000,
        budget_period="week",
    )
    status, answer = await chat(http, gateway, key["key"])
    assert status == 200
    tokens = answer["usage"]["total_tokens"]
    await stats_until(gateway, lambda s: window_requests(s) == 1)
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "status")
    assert code == 0, err
    grace = busy_key_row(out.splitlines(), "grace")
    assert grace["IN FLIGHT"] == "0/2"
    assert grace["LEFT/MIN"] == "9/10"  # the free tier's
    assert grace["TOKENS LEFT/MIN"].endswith("/4000")
    assert grace["BUDGET LEFT"] == f"{50_000 - tokens}/50000 a week"


def test_status_says_what_is_left_of_each_limit() -> None:
    """From a typed snapshot: the columns IN FLIGHT to BUDGET LEFT of a busy key."""
    keys = {k["key_id"]: k for k in canned_snapshot()["keys"]}
    assert limit_cells(keys[12]) == [
        "1/8", "31/100", "418/1000", "12400/20000", "3250000/5000000 a month",
    ]  # fmt: skip
    # No in-flight or token limit; the user's budget is the nearer its end.
    assert limit_cells(keys[31]) == [
        "unlimited", "21/30", "97/300", "unlimited", "840000/1000000 a week (user)",
    ]  # fmt: skip
    assert limit_cells(keys[44])[-1] == "0/100000 a day"
    assert limit_cells(keys[27])[-1] == "unlimited"  # no budget at all
    assert limit_cells(keys[9]) == ["-"] * 5  # deleted: nothing known


async def test_status_of_an_unhealthy_gateway_says_so_and_exits_0(gateway: Gateway) -> None:
    gateway.app[METRICS].draining = True  # /health answers 503 while shutting down
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "status")
    assert code == 0, err
    assert out.startswith("gateway    UNHEALTHY (unavailable)")
    assert "shutting down" in out.splitlines()[0]
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "status", "--json")
    assert code == 0, err
    assert orjson.loads(out)["health"]["status"] == "unavailable"


async def test_status_without_a_gateway_exits_3(tmp_path: Path) -> None:
    code, out, err = await llmgw("--socket", str(tmp_path / "none.sock"), "status")
    assert code == 3
    assert out == ""
    assert "llmgw serve" in err
