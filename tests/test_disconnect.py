"""A client that goes away: vLLM must hear of it at once, and the ledger must say so."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from llmgw.fake_vllm import FakeVLLM, count_prompt_tokens
from llmgw.state import METRICS, UPSTREAMS

from .conftest import Gateway

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Write a long story"}]}


async def test_disconnect_mid_stream_closes_the_upstream_and_records_499(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.token_delay = 0.05
    body = orjson.dumps({**CHAT, "max_tokens": 200, "stream": True})
    session = aiohttp.ClientSession()
    resp = await session.post(
        f"{gateway.base_url}/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    assert resp.status == 200
    received = b""
    async with asyncio.timeout(5):
        while received.count(b'"content":" tok') < 3:
            received += await resp.content.readany()
    resp.close()  # drops the connection mid-stream
    await session.close()

    # vLLM aborts a request only when its connection closes: the fake saw that.
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1, seconds=1.0)
    [row] = await gateway.ledger_rows()
    assert row["status_code"] == 499
    assert row["usage_source"] == "partial"
    assert 3 <= row["completion_tokens"] < 200
    assert row["prompt_tokens"] > 0
    assert gateway.app[METRICS].in_flight == 0
    assert gateway.app[UPSTREAMS].upstreams[0].in_flight == 0
    assert fake.behaviour.open_streams == 0


async def test_disconnect_while_waiting_for_a_non_streaming_answer(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.first_token_delay = 30
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(
                f"{gateway.base_url}/chat/completions",
                data=orjson.dumps(CHAT),
                headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            )
        )
        await fake.behaviour.wait_until(
            lambda: len(fake.behaviour.requests_to("/v1/chat/completions")) == 1
        )
        request.cancel()  # the client gives up and closes its connection
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1, seconds=1.0)
    [row] = await gateway.ledger_rows()
    assert row["status_code"] == 499
    assert row["usage_source"] == "partial"
    assert row["completion_tokens"] == 0
    assert row["prompt_tokens"] > 0


async def test_gateway_serves_normally_after_many_disconnects(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.token_delay = 0.01
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = orjson.dumps({**CHAT, "max_tokens": 100, "stream": True})
    for _ in range(10):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{gateway.base_url}/chat/completions", data=body, headers=headers
            )
            await resp.content.readany()
            resp.close()
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 10, seconds=2.0)
    fake.behaviour.token_delay = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.base_url}/chat/completions",
            data=orjson.dumps({**CHAT, "max_tokens": 2}),
            headers=headers,
        ) as resp,
    ):
        assert resp.status == 200
        usage = (await resp.json())["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(CHAT)
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [499] * 10 + [200]
