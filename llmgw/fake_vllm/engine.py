"""The simulated server in time: ``Engine`` runs the ``scheduler`` step after step, each
step taking its modelled duration, and hands each request's tokens to its handler as the
steps that sample them end.

Time is injected (a ``Clock`` and a ``sleep``), so tests run it on a fake clock without
waiting. Steps are laid end to end on the clock: each ends ``duration`` after the
previous one ended (or after the engine woke from idle), whatever time the event loop
spent between them, so the simulated speed holds while the process keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from llmgw.clock import Clock, SystemClock

from .scheduler import Request, Scheduler, SchedulerStats, SimulationSettings

logger = logging.getLogger("llmgw.fake_vllm")

Sleep = Callable[[float], Awaitable[None]]


class EngineStopped(RuntimeError):
    """The engine's loop ended (stopped, or failed) before the request was done."""


class Generation:
    """One request's progress, as its handler sees it."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._progress = asyncio.Event()
        self._stopped = False
        self.first_token_at: float | None = None  # the clock's monotonic reading

    @property
    def num_prompt_tokens(self) -> int:
        return self._request.num_prompt_tokens

    @property
    def num_output_tokens(self) -> int:
        return self._request.num_output_tokens

    @property
    def num_cached_tokens(self) -> int | None:
        """The prefix-cache hit at admission; None while the request waits."""
        return self._request.num_cached_tokens

    @property
    def done(self) -> bool:
        return self._request.done

    async def until(self, index: int) -> None:
        """Return once generated token ``index`` (from 0) exists."""
        while self._request.num_output_tokens <= index:
            if self._stopped:
                raise EngineStopped("the simulated engine stopped")
            self._progress.clear()
            await self._progress.wait()

    def _advance(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        self._progress.set()

    def _stop(self) -> None:
        self._stopped = True
        self._progress.set()


class Engine:
    def __init__(
        self,
        settings: SimulationSettings,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.scheduler = Scheduler(settings)
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._generations: dict[Request, Generation] = {}
        self._stopped = False

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    @contextlib.asynccontextmanager
    async def generate(
        self, prompt_token_ids: Sequence[int], max_tokens: int
    ) -> AsyncIterator[Generation]:
        """Queue a request; leaving the block before it is done aborts it (frees its
        blocks), as vLLM aborts the request of a client that went away."""
        if self._stopped:
            raise EngineStopped("the simulated engine stopped")
        request = self.scheduler.add_request(prompt_token_ids, max_tokens)
        generation = Generation(request)
        self._generations[request] = generation
        self._wake.set()
        try:
            yield generation
        finally:
            del self._generations[request]
            if not request.done:
                self.scheduler.abort(request)

    async def run(self) -> None:
        """The step loop, until cancelled; requests still open then fail."""
        try:
            await self._loop()
        except Exception:
            logger.exception("the simulated engine failed")
            raise
        finally:
            self._stopped = True
            for generation in self._generations.values():
                generation._stop()

    async def _loop(self) -> None:
        step_ends = self._clock.monotonic()
        while True:
            batch = self.scheduler.schedule()
            if batch is None:
                self._wake.clear()
                await self._wake.wait()
                step_ends = self._clock.monotonic()
                continue
            step_ends += batch.duration
            await self._sleep(max(0.0, step_ends - self._clock.monotonic()))
            output = self.scheduler.update(batch)
            now = self._clock.monotonic()
            for request in output.sampled:
                generation = self._generations.get(request)
                if generation is not None:
                    generation._advance(now)
