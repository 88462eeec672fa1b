"""The vLLM servers behind the gateway: which serve a model, which are healthy, which
is least busy.

Each upstream serves the models configured for it or, when none are configured, those
its `/v1/models` lists (refreshed by the background prober, which keeps the model cards
too: `GET /v1/models` is answered from them, without a call upstream). A request goes
to the least busy healthy upstream that serves its model; the others follow in order,
so the proxy can fail over while nothing has been sent to the client yet. A request
holds a `lease` on its upstream while it is open there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .api_types import UpstreamStatus
from .config import UpstreamSettings
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

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def mark_down(self, error: str) -> None:
        if self.healthy:
            log.warning("upstream %s is down: %s", self.url, error)
        self.healthy = False
        self.last_error = error

    def status(self) -> UpstreamStatus:
        return UpstreamStatus(
            url=self.url,
            healthy=self.healthy,
            in_flight=self.in_flight,
            latency_ms=self.latency_ms,
            models=sorted(self.configured_models or self.discovered_models),
            last_error=self.last_error,
            checked_at=iso_utc(self.checked_at) if self.checked_at else None,
        )


class UpstreamPool:
    def __init__(self, settings: Sequence[UpstreamSettings], probe_timeout: float = 5.0) -> None:
        self._probe_timeout = probe_timeout
        self.upstreams = [
            Upstream(s.url.rstrip("/"), s.api_key, frozenset(s.models), s.priority_scheduling)
            for s in settings
        ]

    def candidates(self, model: str | None) -> list[Upstream]:
        """Upstreams to try for `model`, best first.

        When no upstream is known to serve the model, all are candidates, so vLLM
        itself answers "model does not exist" in its own words.
        """
        serving = [u for u in self.upstreams if model is not None and u.serves(model)]
        pool = serving or self.upstreams
        if len(pool) == 1:
            return pool
        return sorted(pool, key=lambda u: (not u.healthy, u.in_flight))

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
    def lease(self, upstream: Upstream) -> Iterator[Upstream]:
        """`upstream` with one more request open on it, for as long as the block runs."""
        upstream.in_flight += 1
        try:
            yield upstream
        finally:
            upstream.in_flight -= 1

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
