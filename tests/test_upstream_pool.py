"""The pool's ordering of a request's upstreams, on made-up metrics and an injected
clock: the others' requests as vLLM counted them plus ours now, in-flight counts where
vLLM's are not known, full upstreams after those with room, a 503's pause running out
with the clock, and each model's own policy."""

from __future__ import annotations

import contextlib
from typing import Any

from llmgw.config import RoutingSettings, UpstreamSettings
from llmgw.load_metrics import UpstreamLoad
from llmgw.upstreams import Upstream, UpstreamPool

from .conftest import FakeClock

URLS = [f"http://gpu{n}:8000" for n in range(3)]


def pool(clock: FakeClock, **routing: Any) -> UpstreamPool:
    settings = [UpstreamSettings(url, models=("m", "other")) for url in URLS]
    return UpstreamPool(settings, routing=RoutingSettings(**routing), clock=clock)


def read(upstream: Upstream, waiting: int, running: int, model: str = "m") -> None:
    """As if its /metrics had just said so."""
    upstream.loads = {model: UpstreamLoad(waiting, running, 0.5, 100, 40, 0.0)}
    upstream.ours_at_read = dict(upstream.ours)


def urls(upstreams: list[Upstream]) -> list[str]:
    return [u.url for u in upstreams]


def test_least_loaded_counts_the_others_as_read_and_ours_as_they_are(clock: FakeClock) -> None:
    p = pool(clock)
    for upstream, (waiting, running) in zip(p.upstreams, [(2, 3), (0, 4), (1, 1)], strict=True):
        read(upstream, waiting, running)
    assert urls(p.candidates("m")) == [URLS[2], URLS[1], URLS[0]]  # loads 5, 4, 2
    with contextlib.ExitStack() as open_requests:
        for _ in range(3):  # three of ours sent to gpu2 since the read, still open
            open_requests.enter_context(p.lease(p.upstreams[2], "m"))
        assert [u.load("m") for u in p.upstreams] == [5, 4, 5]
        assert urls(p.candidates("m"))[0] == URLS[1]
        read(p.upstreams[2], 1, 4)  # the next read counts them (and one of another's ended)
        assert p.upstreams[2].load("m") == 5
    # Ours ended: gone from the load at once, not at the next read.
    assert [u.load("m") for u in p.upstreams] == [5, 4, 2]
    # One of ours vLLM had not counted yet (on its way) makes no negative "others".
    with p.lease(p.upstreams[1], "m"):
        read(p.upstreams[1], 0, 0)
        assert p.upstreams[1].load("m") == 1


def test_in_flight_counts_where_vllms_are_not_known(clock: FakeClock) -> None:
    p = pool(clock)
    read(p.upstreams[0], 0, 9)
    read(p.upstreams[1], 0, 0, model="other")  # knows nothing of "m"
    p.upstreams[1].in_flight = 2
    p.upstreams[2].in_flight = 1  # never read
    assert [u.load("m") for u in p.upstreams] == [9, 2, 1]
    assert urls(p.candidates("m")) == [URLS[2], URLS[1], URLS[0]]


def test_full_upstreams_come_after_those_with_room_and_the_unhealthy_last(
    clock: FakeClock,
) -> None:
    p = pool(clock, max_waiting=4)
    read(p.upstreams[0], 5, 0)  # more waiting than max_waiting: full, though least loaded
    read(p.upstreams[1], 0, 20)
    read(p.upstreams[2], 0, 30)
    p.upstreams[2].healthy = False
    assert urls(p.candidates("m")) == [URLS[1], URLS[0], URLS[2]]
    assert [s["full"] for s in p.status()] == [True, False, False]
    # With no limit the queue does not count as full.
    unlimited = pool(clock, max_waiting=0)
    read(unlimited.upstreams[0], 50, 0)
    read(unlimited.upstreams[1], 0, 60)
    read(unlimited.upstreams[2], 0, 70)
    assert urls(unlimited.candidates("m"))[0] == URLS[0]


def test_a_503_pauses_an_upstream_until_the_clock_moves_on(clock: FakeClock) -> None:
    p = pool(clock, metrics_interval=2.0)
    for upstream in p.upstreams:
        read(upstream, 0, 0)
    p.mark_busy(p.upstreams[0])
    assert urls(p.candidates("m")) == [URLS[1], URLS[2], URLS[0]]
    clock.advance(1.9)
    assert urls(p.candidates("m"))[-1] == URLS[0]
    clock.advance(0.2)  # the interval (at least a second) has passed
    assert urls(p.candidates("m"))[0] == URLS[0]


def test_each_model_has_its_policy(clock: FakeClock) -> None:
    p = pool(clock, model_policies=("other=round-robin",))
    for upstream, running in zip(p.upstreams, [3, 1, 2], strict=True):
        read(upstream, 0, running)
        upstream.loads = {**(upstream.loads or {}), "other": UpstreamLoad(0, 0, 0, 0, 0, 0)}
    assert [urls(p.candidates("m"))[0] for _ in range(3)] == [URLS[1]] * 3
    assert [urls(p.candidates("other"))[0] for _ in range(3)] == URLS


def test_prefix_affinity_orders_by_the_payloads_prefix(clock: FakeClock) -> None:
    p = pool(clock, policy="prefix-affinity", margin=2.0)
    for upstream in p.upstreams:
        read(upstream, 0, 0)
    body = {"messages": [{"role": "system", "content": "You write Go."}]}
    home = urls(p.candidates("m", {}, body))[0]
    assert all(urls(p.candidates("m", {}, body))[0] == home for _ in range(5))
    # Busier than the least-loaded by more than the margin: the next in its order.
    busy = next(u for u in p.upstreams if u.url == home)
    read(busy, 0, 3)
    assert urls(p.candidates("m", {}, body))[0] != home
    assert urls(p.candidates("m", {}, body))[-1] == home
