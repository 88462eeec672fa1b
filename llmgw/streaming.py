"""Relaying vLLM's server-sent events to the client as they arrive: OpenAI's chunks
(chat and text completions), the Responses API's typed events, and Anthropic's.

Bytes pass through untouched, a whole event at a time (a client cannot use half an
event). Only events that mention `"usage"` or `"error"` are parsed: the usage chunk is
read for the ledger and removed again when the gateway, not the client, asked for it;
an error event is brought into OpenAI's shape and ends the stream (nothing the upstream
sends after it is relayed; `[DONE]` follows it, as vLLM sends it). An event that
mentions `"error"` but is no JSON the gateway can read (`1e999`) is an error too: it is
not relayed raw. Ordinary token chunks are never parsed or re-encoded: JSON escapes
every quote inside a string, so those keys cannot appear in generated text.

The Responses API's and Anthropic's streams carry their usage in their last events
(`response.completed`, `message_delta`) and their errors as `error` events in their own
words, which are relayed as they are; they end with those events, not with `[DONE]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from .errors import error_body, normalise_upstream_error
from .routes import Events
from .usage import InvalidUsage, Usage, usage_of

_EVENT_END = b"\n\n"
# An upstream that frames events differently (CRLF) must still not be buffered whole.
_MAX_HELD = 64 * 1024
_DONE = b"data: [DONE]"
_DONE_EVENT = _DONE + _EVENT_END
_FINISHED = b'"finish_reason":"'  # a chunk that ends a choice (null is unquoted)
_FINGERPRINT = b'"system_fingerprint"'
_MALFORMED = object()  # an event whose data is not JSON
_UNREADABLE_ERROR = error_body(
    "The model server sent an error the gateway could not read.", "server_error", "upstream_error"
)
# What ends a stream of each API, and what marks one of its events as generated tokens
# (counted for a stream cut short). JSON escapes quotes inside strings, and these are
# the serialisers' own spellings (vLLM's pydantic dumps without spaces).
_LAST_EVENT = {
    "openai": _DONE,
    "responses": b'"type":"response.completed"',
    "anthropic": b"event: message_stop",
}
_TOKEN_EVENT = {"responses": b'.delta"', "anthropic": b"event: content_block_delta"}


class SseRelay:
    def __init__(self, *, strip_usage: bool, role_chunk: bool, events: Events = "openai") -> None:
        self._strip_usage = strip_usage
        self._role_chunk = role_chunk
        self.events = events
        self._last_event = _LAST_EVENT[events]
        self._token_event = _TOKEN_EVENT.get(events)
        self._token_events = 0
        self.response_id: str | None = None  # a Responses API stream's response
        self._held = b""
        # Final chunks waiting for the usage chunk that follows them (see _release).
        self._final: list[bytes] = []
        self._events = 0
        self._done_events = 0
        self.usage: Usage | InvalidUsage | None = None
        self.error_status: int | None = None  # set when the upstream streamed an error
        self.ended = False  # an error event ended the stream: relay nothing more

    def feed(self, chunk: bytes) -> bytes:
        """What of `chunk` (after what was held back) can go to the client now."""
        if self.ended:
            return b""
        data = self._held + chunk if self._held else chunk
        if data.endswith(_EVENT_END):  # the usual read: whole events, nothing to hold
            ready, self._held = data, b""
        else:
            cut = data.rfind(_EVENT_END)
            if cut < 0:
                if len(data) <= _MAX_HELD:
                    self._held = data
                    return b""
                cut = len(data) - len(_EVENT_END)
            end = cut + len(_EVENT_END)
            ready, self._held = data[:end], data[end:]
        # Framing newlines are the only raw ones: JSON escapes those inside strings.
        self._events += ready.count(_EVENT_END)
        if self._token_event is not None:
            self._token_events += ready.count(self._token_event)
            if self._last_event in ready:
                self._done_events += 1
            if b'"usage"' in ready or b'"error"' in ready:
                ready = self._inspect_typed(ready)
            return ready
        if ready.endswith(_DONE_EVENT):  # [DONE] ends a stream: no need to scan for it
            self._done_events += 1
        if (
            self._final
            or b'"usage"' in ready
            or b'"error"' in ready
            or (self._strip_usage and _FINISHED in ready)
        ):
            ready = self._inspect(ready)
        return ready

    def finish(self) -> bytes:
        """Whatever is still held when the upstream ends."""
        rest, self._held = self._held, b""
        tail = self.feed(rest + _EVENT_END)[: -len(_EVENT_END)] if rest.strip() else rest
        return tail + self._release(None)

    @property
    def done(self) -> bool:
        """The upstream's `[DONE]` is among what was relayed: the stream is complete."""
        return self._done_events > 0 and not self.ended

    @property
    def completion_events(self) -> int:
        """Token chunks relayed so far: what a cut-short stream is charged for."""
        if self._token_event is not None:
            return self._token_events
        overhead = self._done_events + (1 if self._role_chunk else 0)
        return max(0, self._events - overhead)

    def _inspect_typed(self, block: bytes) -> bytes:
        """The Responses API's or Anthropic's events: the usage of the last event that
        has it (Anthropic's `message_start` has the prompt's alone, its `message_delta`
        the whole count), the response's id, and an `error` event, which ends the
        stream: relayed as it is (it is in the client's API's words already)."""
        out = []
        events = block.split(_EVENT_END)[:-1]
        for event in events:
            out.append(event + _EVENT_END)
            if b'"usage"' not in event and b'"error"' not in event:
                continue
            parsed = _event_json(event)
            if not isinstance(parsed, dict):
                continue
            kind = parsed.get("type")
            if kind == "error":
                self.ended, self.error_status, self._held = True, 500, b""
                break
            if self.events == "anthropic" and kind != "message_delta":
                continue
            if (usage := usage_of(parsed)) is not None:
                self.usage = usage
            response = parsed.get("response")
            if self.response_id is None and isinstance(response, dict):
                response_id = response.get("id")
                self.response_id = response_id if isinstance(response_id, str) else None
        return b"".join(out)

    def _inspect(self, block: bytes) -> bytes:
        out = []
        events = block.split(_EVENT_END)[:-1]
        for i, event in enumerate(events):
            parsed = _event_json(event) if b'"usage"' in event or b'"error"' in event else None
            if parsed is _MALFORMED and b'"error"' in event:
                out.append(self._end(len(events) - i, block, 502, _UNREADABLE_ERROR))
                break
            if isinstance(parsed, dict):
                if (usage := usage_of(parsed)) is not None:
                    self.usage = usage
                    if self._strip_usage and parsed.get("choices") == []:
                        self._events -= 1
                        out.append(self._release(parsed.get("system_fingerprint")))
                        continue
                if "error" in parsed or parsed.get("object") == "error":
                    status, error = self._normalised_error(parsed)
                    out.append(self._end(len(events) - i, block, status, error))
                    break
            if self._strip_usage and (self._final or _FINISHED in event):
                self._final.append(event)
                continue
            out.append(event + _EVENT_END)
        return b"".join(out)

    def _release(self, fingerprint: Any) -> bytes:
        """The held final chunks, as vLLM sends them when no usage chunk was asked for.

        vLLM stamps `system_fingerprint` on the usage chunk when there is one, and on
        the final chunks otherwise; having removed the usage chunk, the gateway moves
        the stamp back where the client would have found it. The field comes last in
        those chunks, so adding it before the closing brace reproduces vLLM's bytes.
        """
        held, self._final = self._final, []
        stamp = b',"system_fingerprint":' + orjson.dumps(fingerprint) + b"}"
        out = []
        for event in held:
            if (
                isinstance(fingerprint, str)
                and _FINISHED in event
                and _FINGERPRINT not in event
                and event.endswith(b"}")
            ):
                event = event[:-1] + stamp
            out.append(event + _EVENT_END)
        return b"".join(out)

    def _end(self, dropped: int, block: bytes, status: int, error: bytes) -> bytes:
        """The end of a stream that an error event ends: the final chunks held back, the
        error, and `[DONE]`. The `dropped` events of `block` from the error on are not
        relayed, so they do not count as generated tokens."""
        self.ended, self.error_status, self._held = True, status, b""
        self._events -= dropped
        if block.endswith(_DONE_EVENT):
            self._done_events -= 1
        return self._release(None) + b"data: " + error + _EVENT_END + _DONE_EVENT

    @staticmethod
    def _normalised_error(parsed: dict[str, Any]) -> tuple[int, bytes]:
        info = parsed.get("error") if isinstance(parsed.get("error"), dict) else parsed
        code = info.get("code") if isinstance(info, dict) else None
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        return status, normalise_upstream_error(status, orjson.dumps(parsed))[0]


def _event_json(event: bytes) -> Any:
    """The event's data as JSON; None when it has none (or is `[DONE]`), `_MALFORMED`
    when it is not JSON."""
    payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    if not payload or payload == b"[DONE]":
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _MALFORMED


def error_event(message: str, type_: str, code: str, events: Events = "openai") -> bytes:
    """The event that ends a stream the gateway had to cut off, in its API's words."""
    if events == "anthropic":
        body = error_body(message, "api_error", shape="anthropic")
        return b"event: error\ndata: " + body + _EVENT_END
    if events == "responses":
        error = {"type": "error", "code": code, "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(error) + _EVENT_END
    return b"data: " + error_body(message, type_, code) + _EVENT_END


class _Handle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What `IdleWatch` needs of an event loop: its clock, and a timer."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle: ...


class IdleWatch:
    """Calls `on_idle` once nothing has arrived for `idle` seconds, unless `paused`.

    One timer per stream, re-armed only when it fires: a stream relays thousands of
    events, and rescheduling a timer twice for each (as `asyncio.timeout` would need)
    costs more than the rest of relaying an event. Each event only notes the time.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "expired", "last", "paused")

    def __init__(
        self, idle: float, on_idle: Callable[[], None], timers: Timers | None = None
    ) -> None:
        # The event loop's clock and timers, or a test's.
        self._loop = timers or asyncio.get_running_loop()
        self._idle = idle
        self._on_idle = on_idle
        self.last = self._loop.time()
        self.paused = False
        self.expired = False
        self._handle = self._loop.call_at(self.last + idle, self._check)

    def touch(self) -> None:
        """Something arrived."""
        self.last = self._loop.time()

    def resume(self) -> None:
        """The client took what it was given: from now on the upstream is timed again."""
        self.paused = False
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self.paused or now - self.last < self._idle:
            start = now if self.paused else self.last
            self._handle = self._loop.call_at(start + self._idle, self._check)
            return
        self.expired = True
        self._on_idle()
