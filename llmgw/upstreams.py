"""The vLLM servers behind the gateway: which serve a model, which are healthy, how
loaded each is, and so where a request goes.

Each upstream serves the models configured for it or, when none are configured, those
its `/v1/models` lists (refreshed by the background prober, which keeps the model cards
too: `GET /v1/models` is answered from them, without a call upstream). The scraper
reads each upstream's `/metrics` every `[routing] metrics_interval` for vLLM's own load
(requests waiting and running, by model). Of that, this gateway's own requests are
known exactly at every moment (sent, not yet ended): an upstream's load is the others'
requests as vLLM last counted them plus ours now, so a burst does not pile onto one
server between two reads, nor does a server that has just finished ours look busy until
the next. An upstream whose metrics cannot be read is loaded by ours alone.

A request's candidates are the healthy upstreams serving its model with room, in the
order of the model's routing policy (`routing`), then those with none (more waiting
than `max_waiting`, or a 503 just now), then the unhealthy; the proxy fails over along
that order while nothing has been sent to the client yet. A request holds a `lease` on
its upstream while it is open there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .api_types import UpstreamStatus
from .clock import Clock, SystemClock
from .config import RoutingSettings, UpstreamSettings
from .load_metrics import UpstreamLoad, scrape
from .routing import Choice, Policy, policy, routing_key
from .times import iso_utc

log = logging.getLogger("llmgw.upstreams")


@dataclass(slots=True, eq=False)
class Upstream:
    url: str
    api_key: str = field(default="", repr=False)
    configured_models: frozenset[str] = frozenset()
    priority_scheduling: bool = False  # vLLM runs with --scheduling-policy priority
    discovered_models: frozenset[str] = frozenset()
    # The model cards its /v1/models listed at the last probe; None until it listed any.
    cards: tuple[dict[str, Any], ...] | None = None
    contexts: dict[str, int] = field(default_factory=dict)  # max_model_len by model
    healthy: bool = True
    in_flight: int = 0
    # vLLM's load by model at the last read of its /metrics; None when not known (not
    # read yet, not exposed, or the read failed).
    loads: dict[str, UpstreamLoad] | None = None
    ours: dict[str, int] = field(default_factory=dict)  # our requests open there, by model
    ours_at_read: dict[str, int] = field(default_factory=dict)  # as they were at that read
    busy_until: float = 0.0  # the clock's monotonic time until which a 503 keeps it full
    latency_ms: float | None = None
    last_error: str | None = None
    checked_at: float | None = None

    def serves(self, model: str) -> bool:
        if self.configured_models:
            return model in self.configured_models
        return model in self.discovered_models

    @property
    def models_known(self) -> bool:
        return bool(self.configured_models) or self.cards is not None

    def model_cards(self) -> list[dict[str, Any]]:
        """Its cards for the models it serves (a configured model it did not list gets a
        plain card of its own)."""
        listed = {card["id"]: card for card in self.cards or ()}
        if not self.configured_models:
            return list(listed.values())
        return [
            listed.get(name) or {"id": name, "object": "model", "owned_by": "vllm"}
            for name in sorted(self.configured_models)
        ]

    def load(self, model: str | None) -> float:
        """Requests on it for `model`: the others' (vLLM's waiting and running at the
        last read, less ours it counted) and ours now; this gateway's in flight when
        vLLM's count is not known."""
        known = self._known(model)
        if known is None or model is None:
            return self.in_flight
        others = max(0, known.waiting + known.running - self.ours_at_read.get(model, 0))
        return others + self.ours.get(model, 0)

    def full(self, model: str | None, max_waiting: int, now: float) -> bool:
        """Whether it has no room for another request: it answered 503 just now, or vLLM
        queues more than `max_waiting` (0: no limit) of `model`'s."""
        if now < self.busy_until:
            return True
        known = self._known(model)
        return bool(max_waiting) and known is not None and known.waiting > max_waiting

    def _known(self, model: str | None) -> UpstreamLoad | None:
        return self.loads.get(model) if self.loads is not None and model is not None else None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def mark_down(self, error: str) -> None:
        if self.healthy:
            log.warning("upstream %s is down: %s", self.url, error)
        self.healthy = False
        self.last_error = error

    def status(self, now: float, max_waiting: int) -> UpstreamStatus:
        models = sorted(self.configured_models or self.discovered_models)
        loads = [self.loads[m] for m in models if m in self.loads] if self.loads else []
        queries = sum(load.prefix_queries for load in loads)
        return UpstreamStatus(
            url=self.url,
            healthy=self.healthy,
            in_flight=self.in_flight,
            latency_ms=self.latency_ms,
            models=models,
            last_error=self.last_error,
            checked_at=iso_utc(self.checked_at) if self.checked_at else None,
            load=sum(self.load(m) for m in models) if loads else float(self.in_flight),
            waiting=sum(load.waiting for load in loads) if loads else None,
            running=sum(load.running for load in loads) if loads else None,
            kv_cache_usage=max(load.kv_cache_usage for load in loads) if loads else None,
            prefix_cache_hit_rate=(
                round(sum(load.prefix_hits for load in loads) / queries, 4) if queries else None
            ),
            full=any(self.full(m, max_waiting, now) for m in (None, *models)),
        )


class UpstreamPool:
    def __init__(
        self,
        settings: Sequence[UpstreamSettings],
        probe_timeout: float = 5.0,
        routing: RoutingSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._probe_timeout = probe_timeout
        self.routing = routing or RoutingSettings()
        self._clock = clock or SystemClock()
        self.upstreams = [
            Upstream(s.url.rstrip("/"), s.api_key, frozenset(s.models), s.priority_scheduling)
            for s in settings
        ]
        self._policies: dict[str | None, Policy] = {}  # by model: round-robin keeps a turn

    def candidates(
        self,
        model: str | None,
        headers: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> list[Upstream]:
        """Upstreams to try for a request of `model`, best first: those with room in the
        order of the model's policy (which may route by the request's `headers` and
        `payload`), then the full ones, then the unhealthy.

        When no upstream is known to serve the model, all are candidates, so vLLM
        itself answers "model does not exist" in its own words.
        """
        serving = [u for u in self.upstreams if model is not None and u.serves(model)]
        pool = serving or self.upstreams
        if len(pool) == 1:
            return pool
        now, max_waiting = self._clock.monotonic(), self.routing.max_waiting
        roomy: list[Upstream] = []
        full: list[Upstream] = []
        for upstream in pool:
            if upstream.healthy:
                (full if upstream.full(model, max_waiting, now) else roomy).append(upstream)
        name = self.routing.policy_of(model)
        key = routing_key(name, headers or {}, payload or {}) if len(roomy) > 1 else None
        order = self._policy(model)
        return [
            *self._ordered(order, roomy, model, key),
            *self._ordered(order, full, model, key),
            *(u for u in pool if not u.healthy),
        ]

    def _policy(self, model: str | None) -> Policy:
        chosen = self._policies.get(model)
        if chosen is None:
            chosen = self._policies[model] = policy(
                self.routing.policy_of(model), self.routing.margin
            )
        return chosen

    @staticmethod
    def _ordered(
        order: Policy, upstreams: list[Upstream], model: str | None, key: str | None
    ) -> list[Upstream]:
        if len(upstreams) < 2:
            return upstreams
        choices = [Choice(u.url, u.load(model)) for u in upstreams]
        by_choice = {id(c): u for c, u in zip(choices, upstreams, strict=True)}
        return [by_choice[id(c)] for c in order.order(choices, key)]

    def mark_busy(self, upstream: Upstream) -> None:
        """`upstream` answered 503 (vLLM's queue is full, or it is starting or stopping):
        passed over while others have room, until the next read of its metrics could say
        otherwise (at least a second)."""
        upstream.busy_until = self._clock.monotonic() + max(self.routing.metrics_interval, 1.0)

    def status(self) -> list[UpstreamStatus]:
        now = self._clock.monotonic()
        return [u.status(now, self.routing.max_waiting) for u in self.upstreams]

    @property
    def any_healthy(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def unknown_model(self, model: str) -> bool:
        """Whether `model` is known to be served by no upstream: every upstream's models
        are known (configured or listed), and none has it."""
        return all(u.models_known for u in self.upstreams) and not any(
            u.serves(model) for u in self.upstreams
        )

    def context_length(self, model: str | None) -> int | None:
        """The model's context (vLLM's `max_model_len`), the smallest any upstream
        lists for it; None when none lists one."""
        lengths = [u.contexts[model] for u in self.upstreams if model in u.contexts]
        return min(lengths) if lengths else None

    def served_models(self) -> list[str]:
        """Every model some upstream serves, sorted."""
        names: set[str] = set()
        for upstream in self.upstreams:
            names |= upstream.configured_models or upstream.discovered_models
        return sorted(names)

    def model_cards(self) -> list[dict[str, Any]]:
        """The models of the healthy upstreams, each once (the first upstream's card)."""
        cards: dict[str, dict[str, Any]] = {}
        for upstream in self.upstreams:
            if upstream.healthy:
                for card in upstream.model_cards():
                    cards.setdefault(card["id"], card)
        return list(cards.values())

    @contextlib.contextmanager
    def lease(self, upstream: Upstream, model: str | None = None) -> Iterator[Upstream]:
        """`upstream` with one more request (of `model`) open on it, for as long as the
        block runs."""
        upstream.in_flight += 1
        if model is not None:
            upstream.ours[model] = upstream.ours.get(model, 0) + 1
        try:
            yield upstream
        finally:
            upstream.in_flight -= 1
            if model is not None:
                upstream.ours[model] -= 1

    async def scrape_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._scrape(session, u) for u in self.upstreams))

    async def run_scraper(self, session: aiohttp.ClientSession) -> None:
        interval = self.routing.metrics_interval
        while True:
            await asyncio.sleep(interval)
            await self.scrape_all(session)

    async def _scrape(self, session: aiohttp.ClientSession, upstream: Upstream) -> None:
        timeout = min(self.routing.metrics_interval, self._probe_timeout) or self._probe_timeout
        try:
            loads = await scrape(session, f"{upstream.url}/metrics", timeout, self._clock)
            # Ours as vLLM counted them: taken as its answer arrives (a request sent or
            # ended while it was on the way is the error of a millisecond or two).
            upstream.ours_at_read = dict(upstream.ours)
            upstream.loads = loads
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            # Down or slow: the prober says which; routing falls back to in-flight counts.
            if upstream.loads is not None:
                log.info("upstream %s: /metrics not read: %s", upstream.url, _describe(exc))
            upstream.loads = None

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._probe(session, u) for u in self.upstreams))

    async def run_prober(self, session: aiohttp.ClientSession, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.probe_all(session)

    async def _probe(self, session: aiohttp.ClientSession, upstream: Upstream) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._probe_timeout):
                async with session.get(f"{upstream.url}/health") as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"/health answered {resp.status}")
                upstream.latency_ms = round((time.perf_counter() - started) * 1000, 2)
                try:
                    upstream.cards = await _list_models(session, upstream)
                except (aiohttp.ClientError, RuntimeError, ValueError, TypeError, KeyError):
                    if not upstream.configured_models:
                        raise  # what it serves is unknown: no use routing to it
                else:
                    upstream.discovered_models = frozenset(c["id"] for c in upstream.cards)
                    upstream.contexts = {
                        c["id"]: c["max_model_len"]
                        for c in upstream.cards
                        if type(c.get("max_model_len")) is int
                    }
        except (
            TimeoutError,
            aiohttp.ClientError,
            RuntimeError,
            ValueError,
            TypeError,
            KeyError,
        ) as exc:
            upstream.mark_down(_describe(exc))
        else:
            if not upstream.healthy:
                log.info("upstream %s is back", upstream.url)
            upstream.healthy = True
            upstream.last_error = None
        finally:
            upstream.checked_at = time.time()


async def _list_models(
    session: aiohttp.ClientSession, upstream: Upstream
) -> tuple[dict[str, Any], ...]:
    async with session.get(f"{upstream.url}/v1/models", headers=upstream.auth_headers()) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/v1/models answered {resp.status}")
        listing = await resp.json()
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise RuntimeError("/v1/models answered without a list of models")
    return tuple(m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    return str(exc) or type(exc).__name__
