"""The official OpenAI SDK against the gateway, as employees use it."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmgw.fake_vllm import FakeVLLM, count_prompt_tokens

from .conftest import Gateway, GatewayFactory, tiers

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about the gateway"}
]
PROMPT_TOKENS = count_prompt_tokens({"messages": MESSAGES})


def async_client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


async def test_async_chat_completion(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        reply = await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=4
        )
    assert reply.choices[0].message.content == " tok0 tok1 tok2 tok3"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT_TOKENS, 4)
    [row] = await gateway.ledger_rows()
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, 4)


async def test_async_stream_without_usage(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        stream = await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=5, stream=True
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok0 tok1 tok2 tok3 tok4"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    [row] = await gateway.ledger_rows()
    assert row["completion_tokens"] == 5 and row["usage_source"] == "reported"


async def test_async_stream_with_include_usage(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        stream = await client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS


async def test_text_completions_embeddings_and_models(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        completion = await client.completions.create(
            model="fake-model", prompt="Once upon", max_tokens=2
        )
        embedding = await client.embeddings.create(model="fake-model", input="hello world")
        models = await client.models.list()
    assert completion.choices[0].text == " tok0 tok1"
    assert len(embedding.data[0].embedding) > 0
    assert [m.id for m in models.data] == ["fake-model"]
    rows = await gateway.ledger_rows()
    assert [r["endpoint"] for r in rows] == ["/v1/completions", "/v1/embeddings", "/v1/models"]


async def test_sync_client(gateway: Gateway, api_key: str) -> None:
    def use_sync_sdk() -> tuple[str | None, str]:
        with openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=2
            )
            stream = client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=3, stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return reply.choices[0].message.content, streamed

    # The sync client blocks; the gateway keeps serving on this test's event loop.
    content, streamed = await asyncio.to_thread(use_sync_sdk)
    assert content == " tok0 tok1"
    assert streamed == " tok0 tok1 tok2"
    assert len(await gateway.ledger_rows()) == 2


@pytest.mark.parametrize("key", ["sk-internal-not-a-real-key", "garbage"])
async def test_bad_keys_raise_authentication_error(gateway: Gateway, key: str) -> None:
    async with async_client(gateway, key) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert key not in caught.value.message


async def test_revoked_key_raises_authentication_error(gateway: Gateway) -> None:
    created = await gateway.create_key("dave")
    async with async_client(gateway, created["key"]) as client:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=1)
        async with gateway.admin() as admin:
            await admin.revoke_key(created["id"])
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            await client.chat.completions.create(model="fake-model", messages=MESSAGES)


async def test_rate_limit_raises_rate_limit_error(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(tiers=tiers(free=(2, 100)))
    key = (await gateway.create_key("erin", tier="free"))["key"]
    async with async_client(gateway, key) as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=1
            )
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.response.headers["Retry-After"] == "30"  # 2/min: one every 30 s
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake.behaviour.requests_to("/v1/chat/completions")) == 2
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [200, 200, 429]


async def test_unknown_model_raises_not_found(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "gpt-9" in caught.value.message


async def test_bad_max_tokens_raises_bad_request(gateway: Gateway, api_key: str) -> None:
    async with async_client(gateway, api_key) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=10**6
            )
    assert caught.value.type == "invalid_request_error"


async def test_mid_stream_failure_raises_in_the_sdk(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.fail = "reset"
    fake.behaviour.fail_after_tokens = 2
    received = []
    async with async_client(gateway, api_key) as client:
        stream = await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=10, stream=True
        )
        with pytest.raises(openai.APIError, match="broke off"):
            async for chunk in stream:
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content)
    assert received == ["", " tok0", " tok1"]
