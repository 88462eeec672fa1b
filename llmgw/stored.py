"""Which upstream made each Responses API response, and for which key.

vLLM keeps a stored response (and runs a background one) in the server that made it,
so `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` must go there, and only
for the key that made it: another key is told the response does not exist, as it would
be by a server it had never used. Bounded in number and in time, oldest dropped first:
an id forgotten is the same 404 a restarted vLLM would give.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Responses remembered at most, and for how long (seconds).
MAX_REMEMBERED = 100_000
REMEMBERED_FOR = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class _Made:
    upstream: str
    key_id: int
    at: float


class StoredResponses:
    def __init__(
        self,
        clock: Callable[[], float],
        limit: int = MAX_REMEMBERED,
        ttl: float = REMEMBERED_FOR,
    ) -> None:
        self._clock, self._limit, self._ttl = clock, limit, ttl
        self._made: OrderedDict[str, _Made] = OrderedDict()

    def __len__(self) -> int:
        return len(self._made)

    def remember(self, response_id: str, upstream: str, key_id: int) -> None:
        now = self._clock()
        self._made[response_id] = _Made(upstream, key_id, now)
        self._made.move_to_end(response_id)
        while len(self._made) > self._limit:
            self._made.popitem(last=False)
        self._expire(now)

    def upstream_of(self, response_id: str, key_id: int) -> str | None:
        """The upstream that made the response, if `key_id` made it (and not too long
        ago); None otherwise."""
        self._expire(self._clock())
        made = self._made.get(response_id)
        return made.upstream if made is not None and made.key_id == key_id else None

    def _expire(self, now: float) -> None:
        while self._made:
            oldest = next(iter(self._made.values()))
            if now - oldest.at < self._ttl:
                return
            self._made.popitem(last=False)
