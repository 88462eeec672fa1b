"""`/health` follows the upstreams and the database, as operators watch it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from llmgw.config import ServerSettings
from llmgw.fake_vllm import FakeVLLM

from .conftest import GatewayFactory


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
        return resp.status, await resp.json()


async def test_health_follows_the_upstream_down_and_back(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, health_check_interval=0.05)
    )
    status, body = await health(gateway.url)
    assert status == 200
    assert body["status"] == "ok"
    assert body["upstreams"][0]["models"] == ["fake-model"]
    # The default limits: this process's own, shared with no one, nothing wrong.
    assert body["limits"] == {
        "backend": "memory",
        "shared": False,
        "error": None,
        "local_decisions": 0,
    }

    await fake.stop()
    async with asyncio.timeout(5):
        while (await health(gateway.url))[0] != 503:
            await asyncio.sleep(0.02)
    status, body = await health(gateway.url)
    assert body["status"] == "unavailable"
    assert body["upstreams"][0]["healthy"] is False
    assert body["upstreams"][0]["last_error"]

    await fake.start()  # same port
    async with asyncio.timeout(5):
        while (await health(gateway.url))[0] != 200:
            await asyncio.sleep(0.02)
    assert (await health(gateway.url))[1]["status"] == "ok"
