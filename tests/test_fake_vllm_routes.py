"""The fake vLLM's other routes (Responses, Anthropic Messages, tokenize, pooling, audio)
in vLLM 0.32's wire format, checked with raw bytes and with the official SDKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from llmgw.fake_vllm import FakeVLLM, completion_text, count_prompt_tokens
from llmgw.fake_vllm.token_ids import prompt_token_ids

RESPONSES = "/v1/responses"
# instructions as a system message, the input as a user message: 2 + (4 + 2) + (4 + 3)
RESPONSES_PROMPT = 2 + 4 + 2 + 4 + 3


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0, timeout=5)
    yield sdk
    await sdk.close()


async def named_events(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The `event:` names and `data:` payloads of a stream with named events, in order."""
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = (await resp.read()).decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        events.append((payload["type"], payload))
    return events


def test_responses_prompt_rule() -> None:
    system = {"role": "system", "content": "be brief"}
    messages = [system, {"role": "user", "content": "say hi now"}]
    assert count_prompt_tokens({"messages": messages}) == RESPONSES_PROMPT


# --- the Responses API ---------------------------------------------------------


async def test_responses_create(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    result = await client.responses.create(
        model="fake-model", instructions="be brief", input="say hi now", max_output_tokens=3
    )
    assert result.id.startswith("resp_")
    assert result.output_text == completion_text(3)
    assert result.status == "incomplete"  # stopped by max_output_tokens
    assert result.incomplete_details is not None
    assert result.incomplete_details.reason == "max_output_tokens"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (RESPONSES_PROMPT, 3)
    assert result.usage.total_tokens == RESPONSES_PROMPT + 3
    assert result.usage.input_tokens_details.cached_tokens == 0
    fake.behaviour.default_max_tokens = 2
    body = {"input": "say hi now", "instructions": "be brief", "request_id": "resp_abc"}
    async with http.post(fake.url + RESPONSES, json=body) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        raw = await resp.json()
    assert raw["id"] == "resp_abc"
    assert (raw["status"], raw["incomplete_details"]) == ("completed", None)
    assert raw["max_output_tokens"] == 2048 - RESPONSES_PROMPT  # the room left, as vLLM says
    assert (raw["tool_choice"], raw["tools"], raw["temperature"]) == ("none", [], 1.0)
    assert raw["usage"]["output_tokens_details"] == {
        "reasoning_tokens": 0,
        "tool_output_tokens": 0,
        "output_tokens_per_turn": [],
        "tool_output_tokens_per_turn": [],
    }
    message = raw["output"][0]
    assert message["id"].startswith("msg_") and message["status"] == "completed"
    assert message["content"] == [
        {"annotations": [], "text": completion_text(2), "type": "output_text", "logprobs": None}
    ]
    assert list(raw)[-4:] == [
        "kv_transfer_params",
        "ec_transfer_params",
        "input_messages",
        "output_messages",
    ]


async def test_responses_stream_events(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = {"input": "say hi now", "instructions": "be brief", "max_output_tokens": 2}
    events = await named_events(http, fake.url + RESPONSES, body | {"stream": True})
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for _, e in events] == list(range(10))
    assert [e["delta"] for n, e in events if n.endswith(".delta")] == [" tok0", " tok1"]
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert (created["status"], created["usage"], created["output"]) == ("in_progress", None, [])
    assert completed["status"] == "incomplete"
    assert (completed["usage"]["input_tokens"], completed["usage"]["output_tokens"]) == (
        RESPONSES_PROMPT,
        2,
    )
    assert completed["output"] == [events[-2][1]["item"]]
    assert {created["id"]} == {completed["id"]}
    assert list(events[6][1]) == [
        "content_index",
        "item_id",
        "logprobs",
        "output_index",
        "sequence_number",
        "text",
        "type",
    ]


async def test_responses_stream_through_the_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="fake-model", input="say hi now", max_output_tokens=3, stream=True
    )
    events = [event async for event in stream]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == completion_text(3)
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 3
    assert last.response.output_text == completion_text(3)


async def test_responses_store_retrieve_and_cancel(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    created = await client.responses.create(model="fake-model", input="hi", max_output_tokens=1)
    # vLLM keeps nothing unless VLLM_ENABLE_RESPONSES_API_STORE is set.
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.retrieve(created.id)
    assert caught.value.body == {
        "message": f"Response with id '{created.id}' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    fake.behaviour.enable_responses_store = True
    created = await client.responses.create(model="fake-model", input="hi", max_output_tokens=1)
    again = await client.responses.retrieve(created.id)
    assert again.model_dump() == created.model_dump()
    stream = await client.responses.create(
        model="fake-model", input="hi", max_output_tokens=2, stream=True
    )
    streamed = [e async for e in stream][-1]
    assert streamed.type == "response.completed"
    assert (await client.responses.retrieve(streamed.response.id)).output_text == " tok0 tok1"
    async with http.post(f"{fake.url}{RESPONSES}/{created.id}/cancel") as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["message"] == "Cannot cancel a synchronous response."
    async with http.post(f"{fake.url}{RESPONSES}/resp_nope/cancel") as resp:
        assert resp.status == 404
    off = await client.responses.create(model="fake-model", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(off.id)


async def test_responses_errors(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.url + RESPONSES, json={"model": "fake-model"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("Bad Request", "body.input")
    assert error["message"] == (
        "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field "
        "required', 'input': '<dict of 1 items>'}"
    )
    fake.behaviour.max_model_len = 5  # 2 + (4 + 5) = 11 tokens
    async with http.post(fake.url + RESPONSES, json={"input": "a b c d e"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error == {
        "message": "The engine prompt length 11 exceeds the max_model_len 5. Please reduce prompt.",
        "type": "invalid_request_error",
        "param": "input",
        "code": 400,
    }
    body = {"input": "x", "background": True}
    async with http.post(fake.url + RESPONSES, json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "background"
    body = {"input": "x", "previous_response_id": "resp_gone"}
    async with http.post(fake.url + RESPONSES, json=body) as resp:
        assert resp.status == 404


async def test_responses_fault_knobs(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    beh = fake.behaviour
    beh.reported_usage, beh.ignore_max_tokens = {"output_tokens": 99}, 4
    result = await client.responses.create(
        model="fake-model", input="hi", max_output_tokens=1, extra_body={"priority": 3}
    )
    assert result.output_text == completion_text(4)
    assert result.usage is not None and result.usage.output_tokens == 99
    assert beh.priorities == [3]
    beh.reported_usage = beh.ignore_max_tokens = None
    beh.fail, beh.fail_after_tokens = "error", 1  # vLLM's generator raises: the stream is cut
    body = {"input": "hi", "max_output_tokens": 3, "stream": True}
    async with http.post(fake.url + RESPONSES, json=body) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert beh.resets == 1
    beh.fail = "http_error"
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="fake-model", input="hi")
    assert [r.path for r in beh.requests].count(RESPONSES) == 3


# --- Anthropic's Messages API --------------------------------------------------

MESSAGES = "/v1/messages"
CLAUDE_MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "say hi now"}]
# `system` becomes a system message: 2 + (4 + 2) + (4 + 3), the chat rule.
CLAUDE_PROMPT = 2 + 4 + 2 + 4 + 3


@pytest.fixture
async def claude(fake: FakeVLLM) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0, timeout=5)
    yield sdk
    await sdk.close()


async def test_messages_create(
    fake: FakeVLLM, claude: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    message = await claude.messages.create(
        model="fake-model", max_tokens=3, system="be brief", messages=CLAUDE_MESSAGES
    )
    assert message.id.startswith("chatcmpl-")  # the chat completion's id underneath
    assert (message.type, message.role, message.stop_reason) == (
        "message",
        "assistant",
        "max_tokens",
    )
    assert [b.type for b in message.content] == ["text"]
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.content[0].text == completion_text(3)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (CLAUDE_PROMPT, 3)
    assert message.usage.cache_read_input_tokens is None
    recorded = fake.behaviour.requests_to(MESSAGES)[-1]
    # anthropic 2.x sends api_key as `Authorization: Bearer`; older ones as x-api-key.
    sent = recorded.headers.get("x-api-key") or recorded.headers["authorization"]
    assert sent in ("x", "Bearer x")
    assert "anthropic-version" in recorded.headers
    body = {"model": "fake-model", "max_tokens": 2, "messages": CLAUDE_MESSAGES}
    async with http.post(fake.url + MESSAGES, json=body) as resp:
        raw = await resp.json()
    assert list(raw) == ["id", "type", "role", "content", "model", "stop_reason", "usage"]
    assert raw["usage"] == {"input_tokens": 2 + 4 + 3, "output_tokens": 2}


async def test_messages_stream_events(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = {"model": "fake-model", "max_tokens": 2, "messages": CLAUDE_MESSAGES, "stream": True}
    events = await named_events(http, fake.url + MESSAGES, body)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert events[1][1] == {
        "type": "content_block_start",
        "content_block": {"type": "text", "text": ""},
        "index": 0,
    }
    assert [e["delta"] for _, e in events[2:4]] == [
        {"type": "text_delta", "text": " tok0"},
        {"type": "text_delta", "text": " tok1"},
    ]
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"input_tokens": 9, "output_tokens": 2},
    }
    assert events[6][1] == {"type": "message_stop"}


async def test_messages_stream_through_the_sdk(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="fake-model", max_tokens=4, system="be brief", messages=CLAUDE_MESSAGES
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == completion_text(4)
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (CLAUDE_PROMPT, 4)


async def test_messages_count_tokens(
    claude: anthropic.AsyncAnthropic, http: aiohttp.ClientSession, fake: FakeVLLM
) -> None:
    counted = await claude.messages.count_tokens(
        model="fake-model", system="be brief", messages=CLAUDE_MESSAGES
    )
    assert counted.input_tokens == CLAUDE_PROMPT
    body = {"model": "fake-model", "messages": CLAUDE_MESSAGES}
    async with http.post(fake.url + MESSAGES + "/count_tokens", json=body) as resp:
        assert await resp.json() == {
            "input_tokens": 9,
            "context_management": {"original_input_tokens": 9},
        }


async def test_messages_errors(
    fake: FakeVLLM, claude: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await claude.messages.create(model="nope", max_tokens=1, messages=CLAUDE_MESSAGES)
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "NotFoundError",
            "message": "The model `nope` does not exist. Valid aliases: fake-model.",
        },
    }
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model="fake-model", max_tokens=5000, messages=CLAUDE_MESSAGES)
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["message"].startswith(  # type: ignore[index]
        "max_completion_tokens=5000 cannot be greater than max_model_len"
    )
    # pydantic refuses a request without max_tokens before vLLM's handler: OpenAI's shape.
    body: dict[str, Any] = {"model": "fake-model", "messages": CLAUDE_MESSAGES}
    async with http.post(fake.url + MESSAGES, json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("Bad Request", "body.max_tokens")
    body["max_tokens"] = 0
    async with http.post(fake.url + MESSAGES, json=body) as resp:
        assert "max_tokens must be positive" in (await resp.json())["error"]["message"]
    fake.behaviour.fail, fake.behaviour.http_error_status = "http_error", 503
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await claude.messages.create(model="fake-model", max_tokens=1, messages=CLAUDE_MESSAGES)
    assert overloaded.value.status_code == 503


async def test_messages_error_mid_stream(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "error", 1
    body = {"model": "fake-model", "max_tokens": 3, "messages": CLAUDE_MESSAGES, "stream": True}
    events = await named_events(http, fake.url + MESSAGES, body)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    error = events[-1][1]["error"]
    assert error["type"] == "internal_error"
    assert error["message"].startswith("2 validation errors for ChatCompletionStreamResponse\n")
    fake.behaviour.fail = None
    fake.behaviour.reported_usage = {"output_tokens": 1}
    events = await named_events(http, fake.url + MESSAGES, body)
    assert events[-2][1]["usage"] == {"input_tokens": 9, "output_tokens": 1}


# --- tokenize, pooling, audio --------------------------------------------------


async def test_tokenize_and_detokenize(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.url + "/tokenize", json={"prompt": "one two one"}) as resp:
        tokenized = await resp.json()
    assert list(tokenized) == ["count", "max_model_len", "tokens", "token_strs"]
    assert tokenized["count"] == count_prompt_tokens({"prompt": "one two one"}) == 4
    assert tokenized["max_model_len"] == 2048 and tokenized["token_strs"] is None
    bos, one, two, _ = tokenized["tokens"]
    assert tokenized["tokens"][3] == one != two
    chat = {"messages": [{"role": "user", "content": "one two"}], "return_token_strs": True}
    async with http.post(fake.url + "/tokenize", json=chat) as resp:
        tokenized = await resp.json()
    assert tokenized["count"] == count_prompt_tokens(chat) == 4 + 2 + 2
    assert tokenized["token_strs"] == [
        "<|start|>", "user", "one", "two", "<|end|>", "\n", "<|start|>", "assistant"
    ]  # fmt: skip
    async with http.post(fake.url + "/detokenize", json={"tokens": [bos, two, one]}) as resp:
        assert await resp.json() == {"prompt": "two one"}
    async with http.post(fake.url + "/detokenize", json={"tokens": [999999]}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == "Token id 999999 is out of vocabulary"


async def test_tokenize_gives_every_server_the_engines_ids(http: aiohttp.ClientSession) -> None:
    """A router that tokenizes on each worker (vllm-router's cache_aware) must see one
    vocabulary across the fleet, and the ids the simulated engine caches by."""
    chat = {
        "messages": [
            {"role": "system", "content": "team prompt"},
            {"role": "user", "content": "hi"},
        ]
    }
    found = []
    for words in (["zeta", "alpha"], ["alpha", "zeta"]):  # met in another order on each
        fake = FakeVLLM()
        await fake.start()
        try:
            prompt = {"prompt": " ".join(words)}
            async with http.post(fake.url + "/tokenize", json=prompt) as resp:
                assert resp.status == 200
            async with http.post(fake.url + "/tokenize", json=chat) as resp:
                found.append((await resp.json())["tokens"])
        finally:
            await fake.stop()
    assert found[0] == found[1] == prompt_token_ids(chat)
    no_generation = {**chat, "add_generation_prompt": False}
    fake = FakeVLLM()
    await fake.start()
    try:
        async with http.post(fake.url + "/tokenize", json=no_generation) as resp:
            assert (await resp.json())["tokens"] == found[0][:-2]
        async with http.post(fake.url + "/tokenize", json={"messages": "hi"}) as resp:
            assert resp.status == 400
    finally:
        await fake.stop()


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
async def test_rerank(fake: FakeVLLM, http: aiohttp.ClientSession, path: str) -> None:
    body = {"query": "red apple", "documents": ["blue sky", "red apple pie", "apple"], "top_n": 2}
    async with http.post(fake.url + path, json=body, headers={"X-Request-Id": "r1"}) as resp:
        ranked = await resp.json()
    assert list(ranked) == ["id", "model", "usage", "results"]
    assert ranked["id"] == "score-r1"
    assert [r["index"] for r in ranked["results"]] == [2, 1]
    assert ranked["results"][0] == {
        "index": 2,
        "document": {"text": "apple", "multi_modal": None},
        "relevance_score": 1.0,
    }
    tokens = (2 + 2 + 3) + (2 + 3 + 3) + (2 + 1 + 3)
    assert ranked["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
async def test_score(fake: FakeVLLM, http: aiohttp.ClientSession, path: str) -> None:
    body = {"queries": "red apple", "documents": ["red", "blue"]}
    async with http.post(fake.url + path, json=body) as resp:
        scored = await resp.json()
    assert scored["object"] == "list" and scored["id"].startswith("score-")
    assert scored["data"] == [
        {"index": 0, "object": "score", "score": 1.0},
        {"index": 1, "object": "score", "score": 0.0},
    ]
    assert scored["usage"] == {
        "prompt_tokens": 12,
        "total_tokens": 12,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


async def test_audio_transcription_and_translation(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    audio = b"\0" * 70_000  # 2.2 seconds of 16 kHz 16-bit mono: 3 seconds, 3 words
    result = await client.audio.transcriptions.create(
        model="fake-model", file=("a.wav", audio, "audio/wav")
    )
    assert result.text == "tok0 tok1 tok2"
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == 3
    recorded = fake.behaviour.requests_to("/v1/audio/transcriptions")[-1]
    assert recorded.headers["content-type"].startswith("multipart/form-data")
    assert len(recorded.body) > len(audio)
    form = aiohttp.FormData()
    form.add_field("file", b"\0" * 10, filename="a.wav", content_type="audio/wav")
    form.add_field("model", "fake-model")
    async with http.post(fake.url + "/v1/audio/translations", data=form) as resp:
        assert await resp.json() == {"text": "tok0"}
    form = aiohttp.FormData()
    form.add_field("model", "fake-model")
    async with http.post(fake.url + "/v1/audio/transcriptions", data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "body.file"
