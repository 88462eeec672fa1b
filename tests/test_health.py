"""`/health` follows the upstreams and the database, and `/metrics` carries vLLM's load
as the gateway last read it, as operators watch them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from llmgw.config import ServerSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import CLIENT, UPSTREAMS

from .busy import KV_CACHE_USAGE, LOAD, PREFIX_HITS, PREFIX_QUERIES, RUNNING, WAITING, busy_upstream
from .conftest import Gateway, GatewayFactory


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


# --- /metrics ---------------------------------------------------------------------------

LOAD_FAMILIES = (
    "llmgw_upstream_load",
    "llmgw_upstream_waiting",
    "llmgw_upstream_running",
    "llmgw_upstream_kv_cache_usage",
    "llmgw_upstream_prefix_cache_queries",
    "llmgw_upstream_prefix_cache_hits",
)


async def metric_families(url: str) -> dict[str, Metric]:
    """`/metrics` as Prometheus reads it: the whole text must parse."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for s in family.samples]


async def test_metrics_carry_vllms_load_by_upstream_and_model(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    async with busy_upstream(gateway, fake):
        families = await metric_families(gateway.url)
    labels = {"upstream": gateway.settings.upstreams[0].url, "model": "fake-model"}
    expected = {
        "llmgw_upstream_load": ("gauge", "llmgw_upstream_load", LOAD),
        "llmgw_upstream_waiting": ("gauge", "llmgw_upstream_waiting", WAITING),
        "llmgw_upstream_running": ("gauge", "llmgw_upstream_running", RUNNING),
        "llmgw_upstream_kv_cache_usage": (
            "gauge",
            "llmgw_upstream_kv_cache_usage",
            KV_CACHE_USAGE,
        ),
        # vLLM's counters stay counters: rate() over them is the hit rate of late.
        "llmgw_upstream_prefix_cache_queries": (
            "counter",
            "llmgw_upstream_prefix_cache_queries_total",
            PREFIX_QUERIES,
        ),
        "llmgw_upstream_prefix_cache_hits": (
            "counter",
            "llmgw_upstream_prefix_cache_hits_total",
            PREFIX_HITS,
        ),
    }
    for name, (kind, sample, value) in expected.items():
        assert families[name].type == kind, name
        assert families[name].documentation, name
        assert samples(families[name]) == [(sample, labels, value)]
    # This gateway's own count is there as before.
    assert samples(families["llmgw_upstream_in_flight"]) == [
        ("llmgw_upstream_in_flight", {"upstream": labels["upstream"]}, LOAD)
    ]


async def test_metrics_have_no_load_of_an_upstream_whose_metrics_were_not_read(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    pool, client = gateway.app[UPSTREAMS], gateway.app[CLIENT]
    await pool.scrape_all(client)
    assert len(samples((await metric_families(gateway.url))["llmgw_upstream_running"])) == 1
    fake.behaviour.serve_metrics = False  # a vLLM that does not expose them: unknown, not 0
    await pool.scrape_all(client)
    families = await metric_families(gateway.url)
    for name in LOAD_FAMILIES:
        assert samples(families[name]) == [], name
    assert [s[2] for s in samples(families["llmgw_upstream_healthy"])] == [1]


async def test_metrics_quote_what_an_upstream_calls_its_model(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    odd = 'team\\"odd" model\nsecond line'
    fake.behaviour.models = [odd]
    await gateway.app[UPSTREAMS].scrape_all(gateway.app[CLIENT])
    families = await metric_families(gateway.url)
    for name in LOAD_FAMILIES:
        assert [s[1]["model"] for s in samples(families[name])] == [odd], name
