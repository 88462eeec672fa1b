"""`LiveStats` alone, on a fake clock: rings, windows, rates, eviction, memory."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from llmgw.api_types import KeyActivity, LiveSnapshot
from llmgw.ledger import UsageRecord
from llmgw.live import LiveStats

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(key_id: int | None = 1, status: int = 200, prompt: int = 3, completion: int = 5) -> Any:
    return UsageRecord(
        "r", "u", key_id, "/v1/chat/completions", "POST", status, 1.0, None,
        prompt, completion, "reported", "fake-model", None, 0.0,
    )  # fmt: skip


def key_row(snapshot: LiveSnapshot, key_id: int) -> KeyActivity:
    rows = [k for k in snapshot["keys"] if k["key_id"] == key_id]
    assert len(rows) == 1, f"key {key_id} is not among {snapshot['keys']}"
    return rows[0]


# --- LiveStats with a fake clock ----------------------------------------------------------


def test_a_request_counts_in_the_second_it_finished() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=10, clock=clock)
    clock.now = 1003.7
    live.observe(record(prompt=3, completion=5))
    clock.now = 1005.2
    snap = live.snapshot(5)
    assert snap["start"] == 1001
    assert snap["now"] == 1005.2
    total = snap["total"]
    assert total["requests"] == [0, 0, 1, 0, 0]
    assert total["prompt_tokens"] == [0, 0, 3, 0, 0]
    assert total["completion_tokens"] == [0, 0, 5, 0, 0]
    assert total["tokens"] == [0, 0, 8, 0, 0]
    row = key_row(snap, 1)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, 3, 5)
    assert (row["tokens"], row["errors"], row["rate_limited"], row["streams"]) == (8, 0, 0, 0)
    # One request since the start 5.2 s ago.
    assert row["requests_per_s"] == pytest.approx(1 / 5.2, abs=1e-3)
    assert row["tokens_per_s"] == pytest.approx(8 / 5.2, abs=1e-3)


def test_429_is_rate_limited_and_other_failures_are_errors() -> None:
    live = LiveStats(window=10, clock=Clock())
    for status in (200, 201, 400, 404, 429, 429, 499, 500, 503):
        live.observe(record(status=status))
    snap = live.snapshot(1)
    assert snap["total"]["requests"] == [9]
    assert snap["total"]["errors"] == [5]
    assert snap["total"]["rate_limited"] == [2]
    row = key_row(snap, 1)
    assert (row["requests"], row["errors"], row["rate_limited"]) == (9, 5, 2)


def test_the_ring_wraps_and_the_window_edge_is_exact() -> None:
    clock = Clock(100.0)
    live = LiveStats(window=5, clock=clock)
    for second in range(100, 113):  # more than two laps of a 5-slot ring
        clock.now = second + 0.5
        live.observe(record(prompt=second, completion=0))
    snap = live.snapshot(5)
    assert snap["start"] == 108
    assert snap["total"]["prompt_tokens"] == [108, 109, 110, 111, 112]
    assert live.snapshot(1)["total"]["prompt_tokens"] == [112]
    clock.now = 114.0  # two quiet seconds: 110..112 are still in, 108..109 have left
    assert live.snapshot(5)["total"]["prompt_tokens"] == [110, 111, 112, 0, 0]
    row = key_row(live.snapshot(5), 1)
    assert row["prompt_tokens"] == 110 + 111 + 112
    clock.now = 117.0  # 112 was exactly a window ago: gone
    assert live.snapshot(5)["total"]["prompt_tokens"] == [0] * 5
    assert live.snapshot(5)["keys"] == []


def test_a_gap_longer_than_the_window_clears_every_slot() -> None:
    clock = Clock(100.0)
    live = LiveStats(window=5, clock=clock)
    for second in range(100, 105):
        clock.now = float(second)
        live.observe(record())
    clock.now = 100.0 + 5 * 7 + 2  # lands on an old slot index after many laps
    live.observe(record(prompt=1, completion=1))
    snap = live.snapshot(5)
    assert snap["total"]["requests"] == [0, 0, 0, 0, 1]
    assert snap["total"]["tokens"] == [0, 0, 0, 0, 2]
    row = key_row(snap, 1)
    assert row["requests"] == 1


def test_a_clock_stepping_back_counts_in_the_newest_second() -> None:
    clock = Clock(200.0)
    live = LiveStats(window=5, clock=clock)
    clock.now = 205.5
    live.observe(record())
    clock.now = 203.0  # NTP stepped the clock back
    live.observe(record())
    snap = live.snapshot(3)
    assert snap["start"] == 203
    assert snap["total"]["requests"] == [0, 0, 2]


def test_rates_over_10_and_60_seconds() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=300, clock=clock)
    for second in range(1000, 1100):  # one request of 10 tokens a second
        clock.now = second + 0.25
        live.observe(record(prompt=4, completion=6))
    clock.now = 1099.5
    rates = live.snapshot(60)["rates"]
    # 10 s: the seconds 1090..1099, the newest half elapsed: 10 requests in 9.5 s.
    assert rates["10s"]["requests"] == 10
    assert rates["10s"]["tokens"] == 100
    assert rates["10s"]["requests_per_s"] == pytest.approx(10 / 9.5, abs=1e-3)
    assert rates["10s"]["tokens_per_s"] == pytest.approx(100 / 9.5, abs=1e-3)
    assert rates["60s"]["requests"] == 60
    assert rates["60s"]["requests_per_s"] == pytest.approx(60 / 59.5, abs=1e-3)


def test_rates_right_after_start_are_not_diluted_nor_inflated() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=300, clock=clock)
    clock.now = 1002.0
    for _ in range(6):
        live.observe(record())
    assert live.snapshot(10)["rates"]["10s"]["requests_per_s"] == pytest.approx(3.0)
    early = LiveStats(window=300, clock=Clock(1000.0))
    early.observe(record())
    assert early.snapshot(10)["rates"]["10s"]["requests_per_s"] == pytest.approx(1.0)


def test_keys_are_busiest_first_and_cut_to_top() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=60, clock=clock)
    live.observe(record(key_id=7))
    clock.now = 1020.0
    for key_id, requests in ((1, 1), (2, 3), (3, 2)):
        for _ in range(requests):
            live.observe(record(key_id=key_id))
    live.stream_opened(4)
    live.observe(record(key_id=None))  # counted in the total only
    snap = live.snapshot(60, top=3)
    assert [k["key_id"] for k in snap["keys"]] == [2, 3, 1]
    assert snap["keys_active"] == 5
    assert sum(snap["total"]["requests"]) == 8
    everything = live.snapshot(60, top=10)["keys"]
    # Key 4 has an open stream and no request; key 7 was active 20 s ago only.
    assert [k["key_id"] for k in everything] == [2, 3, 1, 4, 7]
    assert [k["key_id"] for k in live.snapshot(10, top=10)["keys"]] == [2, 3, 1, 4]


def test_streams_are_counted_per_key_and_in_total() -> None:
    live = LiveStats(window=10, clock=Clock())
    live.stream_opened(1)
    live.stream_opened(1)
    live.stream_opened(2)
    snap = live.snapshot(10)
    assert snap["total"]["streams"] == 3
    assert {k["key_id"]: k["streams"] for k in snap["keys"]} == {1: 2, 2: 1}
    for key_id in (1, 2, 1):
        live.stream_closed(key_id)
    live.stream_closed(1)  # one close too many never makes a negative gauge
    live.stream_closed(99)
    snap = live.snapshot(10)
    assert snap["total"]["streams"] == 0
    assert snap["keys"] == []


def test_a_quiet_key_is_dropped_after_a_whole_window_unless_it_streams() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=60, clock=clock)
    live.observe(record(key_id=1))
    live.observe(record(key_id=2))
    live.stream_opened(2)
    clock.now = 1030.0
    live.observe(record(key_id=3))
    clock.now = 1059.9
    live.snapshot(1)
    assert live.tracked_keys == 3
    clock.now = 1060.0  # a whole window since keys 1 and 2 last did anything
    live.snapshot(1)
    assert live.tracked_keys == 2  # key 2 stays: its stream is open
    clock.now = 1500.0  # long-running stream: still there
    assert [k["key_id"] for k in live.snapshot(60)["keys"]] == [2]
    live.stream_closed(2)
    clock.now = 1560.0
    live.snapshot(1)
    assert live.tracked_keys == 0


def test_memory_stays_bounded_as_keys_come_and_go() -> None:
    clock = Clock(1000.0)
    live = LiveStats(window=60, clock=clock)

    def busy_window(first_key: int) -> None:
        # 60 seconds of traffic from 500 keys, a new set of keys every window.
        for second in range(60):
            clock.now += 1.0
            for key_id in range(first_key + second * 10, first_key + second * 10 + 10):
                live.observe(record(key_id=key_id))
                live.observe(record(key_id=key_id - 5))

    tracemalloc.start()
    try:
        busy_window(0)
        baseline = tracemalloc.get_traced_memory()[0]
        for lap in range(1, 6):
            busy_window(lap * 100_000)
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert live.tracked_keys <= 605 + 5
    assert grown < 1_000_000, f"memory grew by {grown} bytes over five windows"
    clock.now += 60
    live.snapshot(1)
    assert live.tracked_keys == 0


def test_seconds_outside_the_window_are_refused() -> None:
    live = LiveStats(window=10, clock=Clock())
    for seconds in (0, 11):
        with pytest.raises(ValueError, match="from 1 to 10"):
            live.snapshot(seconds)
