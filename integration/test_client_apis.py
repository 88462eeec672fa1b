"""Issue 16's routes through the gateway in front of a real vLLM (0.32.0, the tiny random
Llama): the Responses API and Anthropic's Messages API, streamed and not, through their
official SDKs, and tokenize. The ledger's counts must be vLLM's own usage, to the token.
(Rerank, score and audio need other kinds of model than this one: they are tested
against the fake vLLM only.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.conftest import Gateway, auth

from .conftest import MODEL_NAME, VllmServer
from .test_vllm import gateway  # noqa: F401  (the fixture, re-used)

TEXT = "Hello there, who are you?"


@pytest.fixture
async def key(gateway: Gateway) -> str:  # noqa: F811
    return (await gateway.create_key("integration", tier="premium"))["key"]


@pytest.fixture
async def responses_sdk(gateway: Gateway, key: str) -> AsyncIterator[openai.AsyncOpenAI]:  # noqa: F811
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        yield client


@pytest.fixture
async def messages_sdk(gateway: Gateway, key: str) -> AsyncIterator[anthropic.AsyncAnthropic]:  # noqa: F811
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0) as client:
        yield client


def charged(row: dict[str, Any]) -> tuple[int, int]:
    return row["prompt_tokens"], row["completion_tokens"]


async def test_a_response_is_counted_as_vllm_counts_it(
    gateway: Gateway,  # noqa: F811
    responses_sdk: openai.AsyncOpenAI,
) -> None:
    response = await responses_sdk.responses.create(
        model=MODEL_NAME, input=TEXT, max_output_tokens=6, temperature=0
    )
    assert response.usage is not None and response.usage.input_tokens > 0
    streamed = await responses_sdk.responses.create(
        model=MODEL_NAME, input=TEXT, max_output_tokens=5, temperature=0, stream=True
    )
    events = [event async for event in streamed]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    again = await responses_sdk.responses.retrieve(response.id)
    assert again.id == response.id
    rows = await gateway.ledger_rows()
    assert [r["endpoint"] for r in rows] == [
        "/v1/responses",
        "/v1/responses",
        "/v1/responses/{response_id}",
    ]
    assert charged(rows[0]) == (response.usage.input_tokens, response.usage.output_tokens)
    usage = completed.response.usage
    assert charged(rows[1]) == (usage.input_tokens, usage.output_tokens)
    assert [r["usage_source"] for r in rows[:2]] == ["reported", "reported"]
    assert charged(rows[2]) == (0, 0)


async def test_a_message_is_counted_as_vllm_counts_it(
    gateway: Gateway,  # noqa: F811
    messages_sdk: anthropic.AsyncAnthropic,
) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": TEXT}]
    message = await messages_sdk.messages.create(
        model=MODEL_NAME, max_tokens=6, messages=messages, extra_body={"temperature": 0}
    )
    async with messages_sdk.messages.stream(
        model=MODEL_NAME, max_tokens=5, messages=messages, extra_body={"temperature": 0}
    ) as stream:
        async for _ in stream.text_stream:
            pass
        final = await stream.get_final_message()
    counted = await messages_sdk.messages.count_tokens(model=MODEL_NAME, messages=messages)
    rows = await gateway.ledger_rows()
    assert [r["endpoint"] for r in rows] == [
        "/v1/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]
    assert charged(rows[0]) == (message.usage.input_tokens, message.usage.output_tokens)
    assert charged(rows[1]) == (final.usage.input_tokens, final.usage.output_tokens)
    assert [r["usage_source"] for r in rows[:2]] == ["reported", "reported"]
    assert counted.input_tokens == message.usage.input_tokens
    assert charged(rows[2]) == (0, 0)


async def test_the_gateways_refusal_on_the_messages_api_is_anthropics(
    gateway: Gateway,  # noqa: F811
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="sk-internal-wrong", max_retries=0
    ) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(
                model=MODEL_NAME, max_tokens=2, messages=[{"role": "user", "content": TEXT}]
            )


async def test_tokenize_through_the_gateway_is_vllms(
    gateway: Gateway,  # noqa: F811
    key: str,
    vllm: VllmServer,
) -> None:
    body = orjson.dumps({"model": MODEL_NAME, "prompt": TEXT})
    json = {"Content-Type": "application/json"}  # vLLM takes nothing else
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.url}/tokenize", data=body, headers=auth(key) | json
        ) as resp:
            assert resp.status == 200, await resp.text()
            through = await resp.json()
        async with session.post(f"{vllm.url}/tokenize", data=body, headers=json) as resp:
            direct = await resp.json()
    assert through["tokens"] == direct["tokens"]
    [row] = await gateway.ledger_rows()
    assert (row["endpoint"], charged(row)) == ("/tokenize", (0, 0))
