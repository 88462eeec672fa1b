"""A fake vLLM under a known load, read by the gateway: what `llmgw status`, the TUI and
`/metrics` must show of its upstream (issue 17).

One streamed request is generating (vLLM's running), two more are held back (its
waiting); the fake reports a KV cache of `KV_CACHE_USAGE` and prefix-cache counters
of `PREFIX_QUERIES` and `PREFIX_HITS` tokens; and the gateway has read its `/metrics`
since, so nothing counts as sent after that read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from llmgw.fake_vllm import FakeVLLM
from llmgw.state import CLIENT, UPSTREAMS

from .conftest import Gateway, post_chat

WAITING, RUNNING = 2, 1
LOAD = WAITING + RUNNING
KV_CACHE_USAGE = 0.42
PREFIX_QUERIES, PREFIX_HITS = 1_000, 250  # a hit rate of 25 %
CHAT: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.asynccontextmanager
async def busy_upstream(gateway: Gateway, fake: FakeVLLM) -> AsyncIterator[None]:
    """The gateway's one upstream, `fake`, busy as above for as long as the block runs;
    then every request is let go and must have been answered 200."""
    beh = fake.behaviour
    beh.kv_cache_usage = KV_CACHE_USAGE
    beh.prefix_cache_queries, beh.prefix_cache_hits = PREFIX_QUERIES, PREFIX_HITS
    key = (await gateway.create_key("load", tier="premium"))["key"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # Paced so that it is still generating while the test looks (200 tokens: 10 s).
        beh.token_delay = 0.05
        streamed = {**CHAT, "max_tokens": 200, "stream": True}
        requests = [asyncio.create_task(post_chat(http, gateway, key, streamed))]
        await beh.wait_until(lambda: beh.generating == RUNNING)
        beh.hold = hold = asyncio.Event()
        held = {**CHAT, "max_tokens": 1}
        requests += [
            asyncio.create_task(post_chat(http, gateway, key, held)) for _ in range(WAITING)
        ]
        await beh.wait_until(lambda: beh.held == WAITING and beh.generating == LOAD)
        await gateway.app[UPSTREAMS].scrape_all(gateway.app[CLIENT])
        try:
            yield
        finally:
            beh.token_delay = 0  # the stream ends at once
            hold.set()
            async with asyncio.timeout(10):
                statuses = await asyncio.gather(*requests)
    assert statuses == [200] * LOAD
