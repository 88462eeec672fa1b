"""What the gateway learns about one request as it handles it.

The accounting middleware creates a `RequestContext`, the handlers fill it in (key,
model, upstream, usage, how the response ended), and the middleware turns it into the
request's one ledger record and one access-log line, whichever way the request ended.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .keys import ApiKey
from .ledger import UsageRecord, UsageSource
from .limits import Reservation
from .streaming import SseRelay
from .usage import InvalidUsage, Usage, estimate_prompt_tokens

log = logging.getLogger("llmgw.usage")

CLIENT_CLOSED = 499  # nginx's status for "the client went away first"


class RequestIds:
    """Request ids: 32 hex digits, like a UUID's, but a random per-process half and a
    counter, so they are unique across restarts and cost a counter step, not a trip
    to the operating system's randomness per request (they also go upstream, as the
    X-Request-Id vLLM names its own request by)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


@dataclass(slots=True)
class RequestContext:
    method: str
    path: str
    request_id: str
    timestamp: float  # epoch seconds at the start of the request
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None
    rate_headers: dict[str, str] | None = None
    payload: dict[str, Any] | None = None
    model: str | None = None
    upstream: str | None = None
    ttft_ms: float | None = None
    usage: Usage | InvalidUsage | None = None  # as vLLM reported it in a response body
    relay: SseRelay | None = None
    status: int | None = None  # overrides the response's status (a stream cut short)
    cut: bool = False  # the response was cut off after its first byte
    reservation: Reservation | None = None  # what the request holds of its key's limits
    counts_tokens: bool = True  # False for a route that uses none (tokenize)
    response_id: str | None = None  # the Responses API response an answer made
    # The route the ledger records: its pattern (`/v1/responses/{response_id}`), so a
    # report by endpoint has one line a route, not one an id; the path until routed.
    endpoint: str | None = None

    def mark_first_byte(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000

    async def settle(self, status: int) -> None:
        """Settle the request's reservation with what it used (as its ledger row will
        say), ending with `status`; only the first call counts."""
        if self.reservation is not None:
            prompt, completion, _ = self._usage(status)
            await self.reservation.settle(prompt + completion)

    def record(self, status: int) -> UsageRecord | None:
        """The ledger row for this request; None when no key was recognised."""
        if self.key is None:
            return None
        prompt, completion, source = self._usage(status)
        if source == "invalid":
            # Once per request (a record is made once), never the prompt: only the numbers.
            log.warning(
                "upstream %s reported usage that cannot be true for request %s: %s; "
                "the ledger row is estimated and marked invalid",
                self.upstream,
                self.request_id,
                self._reported().raw,  # type: ignore[union-attr]
            )
        return UsageRecord(
            request_id=self.request_id,
            user_id=self.key.user_id,
            api_key_id=self.key.id,
            endpoint=self.endpoint or self.path,
            method=self.method,
            status_code=status,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            ttft_ms=self.ttft_ms,
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_source=source,
            model=self.model,
            upstream=self.upstream,
            timestamp=self.timestamp,
        )

    def _reported(self) -> Usage | InvalidUsage | None:
        return self.usage or (self.relay.usage if self.relay else None)

    def _usage(self, status: int) -> tuple[int, int, UsageSource]:
        reported = self._reported()
        if isinstance(reported, Usage):
            return reported.prompt_tokens, reported.completion_tokens, "reported"
        if isinstance(reported, InvalidUsage):
            prompt = estimate_prompt_tokens(self.payload) if self.payload else 0
            return prompt, self.relay.completion_events if self.relay else 0, "invalid"
        if self.upstream is None or self.payload is None or not self.counts_tokens:
            return 0, 0, "estimated"  # no upstream saw it, or its route uses no tokens
        completion = self.relay.completion_events if self.relay else 0
        if status == CLIENT_CLOSED or self.cut:
            return estimate_prompt_tokens(self.payload), completion, "partial"
        if status >= 400:
            return 0, 0, "estimated"  # the upstream refused the request
        return estimate_prompt_tokens(self.payload), completion, "estimated"
