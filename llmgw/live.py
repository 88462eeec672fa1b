"""Live statistics: per-second figures of the last few minutes, kept in memory.

What `/stats` and `/stats/stream` show: requests, prompt and completion tokens, errors
(status 400 and up, 499 included, 429 not) and 429s, second by second, for the whole
gateway and per key, plus the streams open right now. A request counts in the second
it *finished* (when its ledger record is made): a long stream shows up once, at its
end, and is visible while it runs only through the open-streams gauge.

Every series is a ring of `window` one-second slots aligned to whole epoch seconds.
Time advances lazily: the first touch of a series in a new second zeroes the slots
skipped since its last one (slice assignment, done in C), so there is no timer task
and `observe` is a dict lookup and a few integer additions. A key's ring is dropped
once the key has been quiet for a whole window with no stream open; checking that is
cheap because keys are kept in order of their last activity, oldest first.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable

from .api_types import KeyActivity, LiveSnapshot, LiveTotals, Rate
from .ledger import UsageRecord

# The counters of one second, stored side by side in a ring's array.
_REQUESTS, _PROMPT, _COMPLETION, _ERRORS, _LIMITED = range(5)
_FIELDS = 5
# The spans `rates` reports, in seconds (shortened to the window if it is shorter).
RATE_SPANS = (10, 60)


class _Ring:
    """`window` seconds of counters; `head` is the newest second it holds, `finished`
    the newest in which a request finished (a stream opening moves only `head`)."""

    __slots__ = ("counts", "finished", "head", "streams")

    def __init__(self, window: int, second: int) -> None:
        self.counts = array("q", bytes(8 * _FIELDS * window))
        self.head = second
        self.finished = -1
        self.streams = 0

    def advance(self, second: int, window: int, zeros: array[int]) -> None:
        """Make `second` (later than `head`) the newest slot, zeroing those skipped."""
        counts, gap = self.counts, second - self.head
        if gap >= window:
            counts[:] = zeros
        else:
            first, last = (self.head + 1) % window, second % window
            if first <= last:
                counts[first * _FIELDS : (last + 1) * _FIELDS] = zeros[: gap * _FIELDS]
            else:  # the skipped slots wrap around the end of the ring
                counts[first * _FIELDS :] = zeros[: (window - first) * _FIELDS]
                counts[: (last + 1) * _FIELDS] = zeros[: (last + 1) * _FIELDS]
        self.head = second

    def add(self, second: int, base: int, prompt: int, completion: int, status: int) -> None:
        self.finished = second
        counts = self.counts
        counts[base] += 1
        counts[base + _PROMPT] += prompt
        counts[base + _COMPLETION] += completion
        if status >= 400:
            counts[base + (_LIMITED if status == 429 else _ERRORS)] += 1

    def values(self, field: int, first: int, last: int, window: int) -> list[int]:
        """One counter for the seconds `first`..`last` (at most a window, all held)."""
        a, b = first % window, last % window
        counts = self.counts
        if a <= b:
            return counts[a * _FIELDS + field : b * _FIELDS + field + 1 : _FIELDS].tolist()
        return (
            counts[a * _FIELDS + field :: _FIELDS].tolist()
            + counts[field : b * _FIELDS + field + 1 : _FIELDS].tolist()
        )

    def total(self, field: int, first: int, last: int, window: int) -> int:
        """The sum of one counter over `first`..`last`, clipped to what the ring holds."""
        first, last = max(first, self.head - window + 1), min(last, self.head)
        if first > last:
            return 0
        return sum(self.values(field, first, last, window))


class LiveStats:
    def __init__(self, window: int = 300, clock: Callable[[], float] = time.time) -> None:
        if window < 1:
            raise ValueError("the window must be at least one second")
        self.window = window
        self._clock = clock
        self._started = clock()
        second = int(self._started)
        self._zeros = array("q", bytes(8 * _FIELDS * window))
        self._total = _Ring(window, second)
        # Least recently active first: the keys due to be dropped are at the front.
        self._keys: OrderedDict[int, _Ring] = OrderedDict()

    @property
    def tracked_keys(self) -> int:
        """How many keys have a ring now (what memory use is proportional to)."""
        return len(self._keys)

    def observe(self, record: UsageRecord) -> None:
        """A finished request (its ledger record): counted in the current second."""
        second = self._tick(self._clock())
        base = (second % self.window) * _FIELDS
        prompt, completion, status = (
            record.prompt_tokens,
            record.completion_tokens,
            record.status_code,
        )
        self._total.add(second, base, prompt, completion, status)
        if record.api_key_id is not None:
            self._ring_of(record.api_key_id, second).add(second, base, prompt, completion, status)

    def stream_opened(self, key_id: int) -> None:
        """A stream began relaying for `key_id`."""
        self._total.streams += 1
        self._ring_of(key_id, self._tick(self._clock())).streams += 1

    def stream_closed(self, key_id: int) -> None:
        """That stream ended, however it ended."""
        # Never below zero, whatever order a failing handler reports things in.
        self._total.streams = max(0, self._total.streams - 1)
        ring = self._keys.get(key_id)
        if ring is not None:
            ring.streams = max(0, ring.streams - 1)

    def snapshot(self, seconds: int, top: int = 50) -> LiveSnapshot:
        """The last `seconds` seconds, oldest first; the newest is the current, still
        filling, second. `keys` holds the `top` busiest keys active in that time."""
        if not 1 <= seconds <= self.window:
            raise ValueError(f"seconds must be from 1 to {self.window}")
        now = self._clock()
        last = self._tick(now)
        first = last - seconds + 1
        window, total = self.window, self._total
        series = {
            name: total.values(field, first, last, window)
            for name, field in (
                ("requests", _REQUESTS),
                ("prompt_tokens", _PROMPT),
                ("completion_tokens", _COMPLETION),
                ("errors", _ERRORS),
                ("rate_limited", _LIMITED),
            )
        }
        tokens = [
            p + c for p, c in zip(series["prompt_tokens"], series["completion_tokens"], strict=True)
        ]
        rates = {}
        for span in sorted({min(s, window) for s in RATE_SPANS}):
            rates[f"{span}s"] = self._rate(total, now, last, span)
        active, keys = self._busiest(now, first, last, top)
        return LiveSnapshot(
            now=round(now, 3),
            window=window,
            seconds=seconds,
            start=first,
            total=LiveTotals(
                tokens=tokens,
                requests=series["requests"],
                prompt_tokens=series["prompt_tokens"],
                completion_tokens=series["completion_tokens"],
                errors=series["errors"],
                rate_limited=series["rate_limited"],
                streams=total.streams,
            ),
            rates=rates,
            keys_active=active,
            keys=keys,
        )

    # --- internals ----------------------------------------------------------------

    def _tick(self, now: float) -> int:
        """The current second; on the first call in a new second, the total ring moves
        on and quiet keys are dropped."""
        second = int(now)
        total = self._total
        if second != total.head:
            if second < total.head:
                return total.head  # the clock stepped back: keep counting in the newest
            total.advance(second, self.window, self._zeros)
            self._drop_quiet_keys(second)
        return second

    def _ring_of(self, key_id: int, second: int) -> _Ring:
        ring = self._keys.get(key_id)
        if ring is None:
            ring = self._keys[key_id] = _Ring(self.window, second)
        elif ring.head != second:
            ring.advance(second, self.window, self._zeros)
            self._keys.move_to_end(key_id)
        return ring

    def _drop_quiet_keys(self, second: int) -> None:
        horizon = second - self.window
        keys = self._keys
        while keys:
            key_id = next(iter(keys))
            ring = keys[key_id]
            if ring.head > horizon:
                return
            if ring.streams:
                # An open stream is activity: the key stays, and moves to the back.
                ring.advance(second, self.window, self._zeros)
                keys.move_to_end(key_id)
            else:
                del keys[key_id]

    def _elapsed(self, now: float, last: int, span: int) -> float:
        """The time the last `span` slots cover: the newest only in part, and none of
        it before the gateway started; never under a second, so one early request
        does not read as a thousand a second."""
        covered = span - 1 + min(max(now - last, 0.0), 1.0)
        return max(1.0, min(covered, now - self._started))

    def _rate(self, ring: _Ring, now: float, last: int, span: int) -> Rate:
        first, window = last - span + 1, self.window
        requests = ring.total(_REQUESTS, first, last, window)
        tokens = ring.total(_PROMPT, first, last, window) + ring.total(
            _COMPLETION, first, last, window
        )
        elapsed = self._elapsed(now, last, span)
        return Rate(
            requests=requests,
            tokens=tokens,
            errors=ring.total(_ERRORS, first, last, window),
            rate_limited=ring.total(_LIMITED, first, last, window),
            requests_per_s=round(requests / elapsed, 3),
            tokens_per_s=round(tokens / elapsed, 3),
        )

    def _busiest(
        self, now: float, first: int, last: int, top: int
    ) -> tuple[int, list[KeyActivity]]:
        """How many keys had a request in `first`..`last` or have a stream open, and the
        `top` busiest of them: by requests over the last 10 s, then open streams, then
        tokens over the last 10 s, then the most recently active."""
        window = self.window
        span = min(RATE_SPANS[0], window)
        recent = last - span + 1
        ranked = []
        for key_id, ring in self._keys.items():
            if ring.finished < first and not ring.streams:
                continue
            requests = ring.total(_REQUESTS, recent, last, window)
            tokens = ring.total(_PROMPT, recent, last, window) + ring.total(
                _COMPLETION, recent, last, window
            )
            ranked.append((-requests, -ring.streams, -tokens, -ring.head, key_id, ring))
        ranked.sort(key=lambda r: r[:5])
        # Sums over the whole range cost a slice each: only for the keys shown.
        elapsed = self._elapsed(now, last, span)
        rows = []
        for requests, _, tokens, _, key_id, ring in ranked[:top]:
            prompt = ring.total(_PROMPT, first, last, window)
            completion = ring.total(_COMPLETION, first, last, window)
            rows.append(
                KeyActivity(
                    key_id=key_id,
                    requests_per_s=round(-requests / elapsed, 3),
                    tokens_per_s=round(-tokens / elapsed, 3),
                    requests=ring.total(_REQUESTS, first, last, window),
                    tokens=prompt + completion,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    errors=ring.total(_ERRORS, first, last, window),
                    rate_limited=ring.total(_LIMITED, first, last, window),
                    streams=ring.streams,
                )
            )
        return len(ranked), rows
