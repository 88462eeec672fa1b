"""The SSE relay alone: chunk boundaries anywhere, usage captured, stamps put back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from llmgw.streaming import IdleWatch, SseRelay
from llmgw.usage import Usage

ROLE = (
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"finish_reason":null}]}\n\n'
)
TOKEN = (
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":" hi"},"finish_reason":null}]}\n\n'
)
LAST = (
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}\n\n'
)
USAGE = (
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":7,"total_tokens":9,'
    b'"completion_tokens":2},"system_fingerprint":"fp-1"}\n\n'
)
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + TOKEN + LAST + USAGE + DONE


def relay_in_pieces(relay: SseRelay, data: bytes, size: int) -> bytes:
    out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + relay.finish()


@pytest.mark.parametrize("size", [1, 3, 17, 64, len(STREAM)])
def test_stream_passes_unchanged_when_the_client_asked_for_usage(size: int) -> None:
    relay = SseRelay(strip_usage=False, role_chunk=True)
    assert relay_in_pieces(relay, STREAM, size) == STREAM
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=2)


@pytest.mark.parametrize("size", [1, 5, 40, len(STREAM)])
def test_usage_chunk_is_removed_and_its_fingerprint_put_on_the_final_chunk(size: int) -> None:
    relay = SseRelay(strip_usage=True, role_chunk=True)
    out = relay_in_pieces(relay, STREAM, size)
    stamped = LAST[:-3] + b',"system_fingerprint":"fp-1"}\n\n'
    assert out == ROLE + TOKEN + stamped + DONE
    assert json.loads(stamped[6:])["system_fingerprint"] == "fp-1"
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=2)


def test_nothing_is_held_back_longer_than_one_event() -> None:
    relay = SseRelay(strip_usage=True, role_chunk=True)
    assert relay.feed(ROLE[:10]) == b""
    assert relay.feed(ROLE[10:] + TOKEN[:5]) == ROLE
    assert relay.feed(TOKEN[5:]) == TOKEN


def test_completion_events_count_what_was_relayed() -> None:
    relay = SseRelay(strip_usage=True, role_chunk=True)
    relay.feed(ROLE + TOKEN + TOKEN + TOKEN)
    assert relay.completion_events == 3


def test_error_event_is_normalised_and_releases_held_chunks() -> None:
    relay = SseRelay(strip_usage=True, role_chunk=True)
    error = (
        b'data: {"error": {"message": "Internal server error", "type": "InternalServerError",'
        b' "param": null, "code": 500}}\n\n'
    )
    out = relay.feed(ROLE + LAST + error + DONE) + relay.finish()
    events = out.split(b"\n\n")
    assert events[1] == LAST[:-2]
    assert json.loads(events[2][6:]) == {
        "error": {
            "message": "Internal server error",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert relay.error_status == 500


def test_generated_text_that_mentions_usage_is_not_mistaken_for_it() -> None:
    relay = SseRelay(strip_usage=True, role_chunk=False)
    tricky = b'data: {"choices":[{"text":"\\"usage\\": {} \\"error\\"","finish_reason":null}]}\n\n'
    assert relay.feed(tricky) == tricky
    assert relay.usage is None
    assert relay.error_status is None


def test_a_stream_without_event_boundaries_is_not_buffered_whole() -> None:
    relay = SseRelay(strip_usage=False, role_chunk=False)
    crlf = b'data: {"x":1}\r\n\r\n' * 5000  # 90 KB with no bare blank line
    out = b"".join(relay.feed(crlf[i : i + 4096]) for i in range(0, len(crlf), 4096))
    assert len(out) > len(crlf) // 2
    assert out + relay.finish() == crlf


class FakeTimers:
    """An event loop's clock and timers that move only when told."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.Handle:
        self.timers.append((when, callback))
        return asyncio.Handle(lambda: None, (), asyncio.get_running_loop())

    def advance(self, seconds: float) -> None:
        """Move on, firing each timer whose time has come (as the loop would)."""
        self.now += seconds
        while due := [t for t in self.timers if t[0] <= self.now]:
            self.timers.remove(due[0])
            due[0][1]()


async def test_idle_watch_fires_once_after_silence_and_never_while_paused() -> None:
    fired: list[float] = []
    timers = FakeTimers()
    watch = IdleWatch(0.05, lambda: fired.append(timers.now), timers)
    for _ in range(5):  # events keep coming: no expiry however long it runs
        timers.advance(0.03)
        watch.touch()
    watch.paused = True  # a slow client: the upstream is not timed
    timers.advance(10)
    assert (fired, watch.expired) == ([], False)
    watch.resume()
    resumed = timers.now
    timers.advance(0.049)
    assert not fired  # counted from the resume
    timers.advance(0.002)
    assert watch.expired and fired == [pytest.approx(resumed + 0.05, abs=0.002)]
    timers.advance(100)
    assert len(fired) == 1  # once
    # One timer at a time, re-armed only when it fires: not one per event.
    assert len(timers.timers) <= 1
    watch.cancel()
