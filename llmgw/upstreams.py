"""The vLLM servers behind the gateway: which serve a model, which are healthy, which
is least busy.

Each upstream serves the models configured for it or, when none are configured, those
its `/v1/models` lists (refreshed by the background prober). A request goes to the
least busy healthy upstream that serves its model; the others follow in order, so the
proxy can fail over while nothing has been sent to the client yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import UpstreamSettings
from .times import iso_utc

log = logging.getLogger("llmgw.upstreams")


@dataclass(slots=True, eq=False)
class Upstream:
    url: str
    api_key: str = field(default="", repr=False)
    configured_models: frozenset[str] = frozenset()
    discovered_models: frozenset[str] = frozenset()
    healthy: bool = True
    in_flight: int = 0
    latency_ms: float | None = None
    last_error: str | None = None
    checked_at: float | None = None

    def serves(self, model: str) -> bool:
        if self.configured_models:
            return model in self.configured_models
        return model in self.discovered_models

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def mark_down(self, error: str) -> None:
        if self.healthy:
            log.warning("upstream %s is down: %s", self.url, error)
        self.healthy = False
        self.last_error = error

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "latency_ms": self.latency_ms,
            "models": sorted(self.configured_models or self.discovered_models),
            "last_error": self.last_error,
            "checked_at": iso_utc(self.checked_at) if self.checked_at else None,
        }


class UpstreamPool:
    def __init__(self, settings: Sequence[UpstreamSettings], probe_timeout: float = 5.0) -> None:
        self._probe_timeout = probe_timeout
        self.upstreams = [
            Upstream(s.url.rstrip("/"), s.api_key, frozenset(s.models)) for s in settings
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
                if not upstream.configured_models:
                    upstream.discovered_models = await _list_models(session, upstream)
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError, TypeError) as exc:
            upstream.mark_down(_describe(exc))
        else:
            if not upstream.healthy:
                log.info("upstream %s is back", upstream.url)
            upstream.healthy = True
            upstream.last_error = None
        finally:
            upstream.checked_at = time.time()


async def _list_models(session: aiohttp.ClientSession, upstream: Upstream) -> frozenset[str]:
    async with session.get(f"{upstream.url}/v1/models", headers=upstream.auth_headers()) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/v1/models answered {resp.status}")
        listing = await resp.json()
    return frozenset(str(m["id"]) for m in listing.get("data", []) if "id" in m)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    return str(exc) or type(exc).__name__
