"""The fake vLLM speaks vLLM's wire format, checked with the openai SDK and raw bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmgw.fake_vllm import (
    FakeVLLM,
    FakeVLLMBehaviour,
    completion_text,
    count_completion_tokens,
    count_prompt_tokens,
)

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "say hi now"},
]
PROMPT_TOKENS = 2 + 4 * 2 + 2 + 3  # generation prompt + per-message overhead + words
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0, timeout=5)
    yield sdk
    await sdk.close()


async def sse_events(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[str]:
    """The raw `data:` payloads of a stream, in order, asserting the SSE framing."""
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = (await resp.read()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    assert all(f.startswith("data: ") for f in frames[:-1])
    return [f.removeprefix("data: ") for f in frames[:-1]]


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    return error


async def test_models_list(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.behaviour.models = ["alpha", "beta"]
    assert [m.id for m in (await client.models.list()).data] == ["alpha", "beta"]
    async with http.get(fake.url + "/v1/models") as resp:
        listing = await resp.json()
    assert listing["object"] == "list"
    card = listing["data"][0]
    fields = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len"]
    assert list(card) == [*fields, "permission"]
    assert (card["object"], card["owned_by"], card["root"], card["parent"]) == (
        "model",
        "vllm",
        "alpha",
        None,
    )
    assert card["max_model_len"] == 2048
    assert card["permission"][0]["object"] == "model_permission"
    assert card["permission"][0]["id"].startswith("modelperm-")


async def test_health_is_empty_200(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with http.get(fake.url + "/health") as resp:
        assert (resp.status, await resp.read()) == (200, b"")


async def test_chat_non_streaming(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    result = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=5
    )
    assert result.id.startswith("chatcmpl-")
    assert result.model == "fake-model"
    assert result.choices[0].message.content == completion_text(5) == " tok0 tok1 tok2 tok3 tok4"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.prompt_tokens == count_prompt_tokens({"messages": MESSAGES})
    assert result.usage.prompt_tokens == PROMPT_TOKENS
    assert (result.usage.completion_tokens, result.usage.total_tokens) == (5, PROMPT_TOKENS + 5)
    body = {"messages": MESSAGES, "max_tokens": 5}
    async with http.post(fake.url + CHAT_PATH, json=body) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        raw = await resp.json()
    assert raw["object"] == "chat.completion"
    choice = raw["choices"][0]
    assert choice["stop_reason"] is None
    assert choice["message"]["reasoning"] is None
    assert "tool_calls" not in choice["message"]
    assert raw["usage"]["prompt_tokens_details"] is None
    assert raw["system_fingerprint"] == fake.behaviour.system_fingerprint
    assert raw["kv_transfer_params"] is None
    assert raw["prompt_logprobs"] is None


async def test_chat_without_limit_stops_at_server_default(
    fake: FakeVLLM, client: openai.AsyncOpenAI
) -> None:
    fake.behaviour.default_max_tokens = 3
    result = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert result.choices[0].message.content == completion_text(3)
    assert result.choices[0].finish_reason == "stop"
    assert count_completion_tokens({"messages": MESSAGES}, default_max_tokens=3) == 3


async def test_completion_non_streaming(client: openai.AsyncOpenAI) -> None:
    result = await client.completions.create(
        model="fake-model", prompt="one two three", max_tokens=4
    )
    assert result.id.startswith("cmpl-")
    assert result.object == "text_completion"
    assert result.choices[0].text == completion_text(4)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 4)
    assert count_prompt_tokens({"prompt": "one two three"}) == 4


async def test_chat_stream_bytes_without_usage(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    events = await sse_events(http, fake.url + CHAT_PATH, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 3
    role = chunks[0]
    delta = {"role": "assistant", "content": ""}
    assert role["choices"] == [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    ]
    head = ["id", "object", "created", "model", "choices"]
    assert list(role) == [*head, "prompt_token_ids", "prompt_text"]
    assert [c["choices"][0]["delta"] for c in chunks[1:]] == [
        {"content": f" tok{i}"} for i in range(3)
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:]] == [None, None, "length"]
    assert "stop_reason" not in chunks[1]["choices"][0]
    assert chunks[-1]["choices"][0]["stop_reason"] is None
    assert list(chunks[1]) == head
    assert all("usage" not in c for c in chunks)
    assert {c["id"] for c in chunks} == {role["id"]}
    assert role["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert events[1].startswith('{"id":"chatcmpl-')  # compact, like model_dump_json


async def test_chat_stream_usage_chunk(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2, "stream": True}
    body["stream_options"] = {"include_usage": True}
    events = await sse_events(http, fake.url + CHAT_PATH, body)
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    expected = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + 2}
    assert usage_chunk["usage"] == expected | {"completion_tokens": 2}
    assert "system_fingerprint" not in json.loads(events[-3])  # the usage chunk carries it
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion_text(2)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


async def test_continuous_usage_stats(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2, "stream": True}
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    events = await sse_events(http, fake.url + CHAT_PATH, body)
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 2]
    totals = [PROMPT_TOKENS + n for n in (0, 1, 2, 2)]
    assert [c["usage"]["total_tokens"] for c in chunks] == totals


async def test_completion_stream(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = {"prompt": "a b", "max_tokens": 2, "stream": True}
    body["stream_options"] = {"include_usage": True}
    events = await sse_events(http, fake.url + "/v1/completions", body)
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks[:2]] == [" tok0", " tok1"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:2]] == [None, "length"]
    assert chunks[2]["object"] == "text_completion"
    assert chunks[2]["choices"] == []
    assert chunks[2]["usage"] == {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}


async def test_stream_options_without_stream_is_rejected(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert caught.value.status_code == 400
    body = {"messages": MESSAGES, "stream_options": {"include_usage": True}}
    async with http.post(fake.url + CHAT_PATH, json=body) as resp:
        assert resp.status == 400
        error = await error_of(resp)
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "stream_options", 400)
    assert error["message"].startswith(
        "1 validation error:\n  {'type': 'value_error', 'loc': ('body',), 'msg': 'Value error, "
        "Stream options can only be defined when `stream=True`. (parameter=stream_options)'"
    )
    assert error["message"].endswith(
        "'ctx': {'error': VLLMValidationError('Stream options can only be defined when "
        "`stream=True`.')}}"
    )


async def test_unknown_model_is_404(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.status_code == 404
    async with http.post(
        fake.url + "/v1/completions", json={"model": "nope", "prompt": "x"}
    ) as resp:
        assert resp.status == 404
        error = await error_of(resp)
    assert error == {
        "message": "The model `nope` does not exist. Valid aliases: fake-model.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("max_tokens", "message", "param"),
    [
        (
            -1,
            "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)",
            "max_tokens",
        ),
        (
            5000,
            "max_tokens=5000 cannot be greater than max_model_len=max_total_tokens=2048. "
            "Please request fewer output tokens. (parameter=max_tokens, value=5000)",
            "max_tokens",
        ),
        (
            2040,
            "This model's maximum context length is 2048 tokens. However, you requested 2040 "
            f"output tokens and your prompt contains {PROMPT_TOKENS} input tokens, for a total of "
            f"{2040 + PROMPT_TOKENS} tokens. Please reduce the length of the input prompt or the "
            f"number of requested output tokens. (parameter=input_tokens, value={PROMPT_TOKENS})",
            "input_tokens",
        ),
    ],
)
async def test_bad_max_tokens_is_400(
    client: openai.AsyncOpenAI, max_tokens: int, message: str, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=max_tokens
        )
    assert caught.value.body == {
        "message": message,
        "type": "BadRequestError",
        "param": param,
        "code": 400,
    }


async def test_invalid_json_is_400(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(fake.url + CHAT_PATH, data=b"{nope", headers=headers) as resp:
        assert resp.status == 400
        error = await error_of(resp)
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "body.1", 400)
    assert error["message"] == (
        "1 validation error:\n  {'type': 'json_invalid', 'loc': ('body', 1), 'msg': 'JSON "
        "decode error', 'input': {}, 'ctx': {'error': 'Expecting property name enclosed in "
        "double quotes'}}"
    )


async def test_model_defaults_to_first_served(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake.behaviour.models = ["first", "alias"]
    for body in ({"messages": MESSAGES}, {"messages": MESSAGES, "model": "alias"}):
        async with http.post(fake.url + CHAT_PATH, json=body) as resp:
            assert (await resp.json())["model"] == "first"


async def test_x_request_id(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    url, body = fake.url + CHAT_PATH, dict[str, Any](messages=MESSAGES)
    async with http.post(url, json=body, headers={"X-Request-Id": "abc123"}) as resp:
        assert (await resp.json())["id"] == "chatcmpl-abc123"
        assert "X-Request-Id" not in resp.headers  # only with --enable-request-id-headers
    fake.behaviour.enable_request_id_headers = True
    body["stream"] = True
    async with http.post(url, json=body, headers={"X-Request-Id": "abc123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc123"
        await resp.read()
    recorded = fake.behaviour.requests_to(CHAT_PATH)
    assert recorded[-1].headers["x-request-id"] == "abc123"
    assert recorded[-1].json == body


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="fake-model", input=["hello world", "hi"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3 + 2
    again = await client.embeddings.create(model="fake-model", input="hello world")
    assert again.data[0].embedding == result.data[0].embedding


async def test_reset_mid_stream_breaks_the_sdk_stream(
    fake: FakeVLLM, client: openai.AsyncOpenAI
) -> None:
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "reset", 2
    stream = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=5, stream=True
    )
    received: list[str] = []

    async def drain() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError):
        await drain()
    assert "".join(received) == completion_text(2)
    assert fake.behaviour.resets == 1
    assert fake.behaviour.aborted == 0


async def test_stall_then_client_leaves_is_an_abort(
    fake: FakeVLLM, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmgw.fake_vllm")
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "stall", 1
    body = {"messages": MESSAGES, "max_tokens": 5, "stream": True}
    resp = await http.post(fake.url + CHAT_PATH, json=body)
    assert b'"role":"assistant"' in await resp.content.readuntil(b"\n\n")
    assert b" tok0" in await resp.content.readuntil(b"\n\n")
    assert fake.behaviour.open_streams == 1
    resp.close()
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1)
    assert fake.behaviour.open_streams == 0
    request_id = fake.behaviour.aborted_request_ids[0]
    assert request_id.startswith("chatcmpl-")
    assert f"Aborted request(s) {request_id}." in caplog.messages


async def test_error_mid_stream(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "error", 1
    body = {"messages": MESSAGES, "max_tokens": 5, "stream": True}
    body["stream_options"] = {"include_usage": True}
    events = await sse_events(http, fake.url + CHAT_PATH, body)
    assert len(events) == 4
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": " tok0"}
    assert events[2] == (
        '{"error": {"message": "Internal server error", "type": "InternalServerError", '
        '"param": null, "code": 500}}'
    )
    assert events[3] == "[DONE]"


async def test_http_error_with_retry_after(fake: FakeVLLM, client: openai.AsyncOpenAI) -> None:
    fake.behaviour.fail, fake.behaviour.http_error_status = "http_error", 429
    fake.behaviour.http_error_retry_after, fake.behaviour.http_error_times = "7", 1
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.body == {
        "message": "Too Many Requests",
        "type": "TooManyRequestsError",
        "param": None,
        "code": 429,
    }
    result = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=1
    )
    assert result.choices[0].message.content == " tok0"


async def test_headers_delay_provokes_a_timeout(fake: FakeVLLM) -> None:
    fake.behaviour.headers_delay = 1.0
    sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        await sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    await sdk.close()


async def test_first_token_delay(fake: FakeVLLM, client: openai.AsyncOpenAI) -> None:
    fake.behaviour.first_token_delay = 0.2
    started = time.monotonic()
    stream = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=1, stream=True
    )
    first = await stream.__anext__()
    assert time.monotonic() - started >= 0.2
    assert first.choices[0].delta.role == "assistant"
    await stream.close()


async def test_stop_refuses_and_restart_reuses_the_port(
    fake: FakeVLLM, client: openai.AsyncOpenAI
) -> None:
    port = fake.port
    await fake.stop()
    with pytest.raises(openai.APIConnectionError):
        await client.models.list()
    await fake.start()
    assert fake.port == port
    assert [m.id for m in (await client.models.list()).data] == ["fake-model"]


async def test_stop_cuts_live_streams(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake.behaviour.fail = "stall"
    body = {"messages": MESSAGES, "stream": True}
    resp = await http.post(fake.url + CHAT_PATH, json=body)
    await resp.content.readuntil(b"\n\n")
    started = time.monotonic()
    await asyncio.wait_for(fake.stop(), 5)
    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 5)
    assert fake.behaviour.aborted == 1


async def test_counters_and_recorded_requests(fake: FakeVLLM, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=1)
    recorded = fake.behaviour.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", CHAT_PATH)
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.json == {"messages": MESSAGES, "model": "fake-model", "max_tokens": 1}
    assert json.loads(recorded.body) == recorded.json
    assert (fake.behaviour.started, fake.behaviour.finished, fake.behaviour.aborted) == (1, 1, 0)


async def test_ignore_max_tokens_generates_regardless(
    fake: FakeVLLM, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.behaviour.ignore_max_tokens = 7
    reply = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=2
    )
    assert reply.choices[0].message.content == completion_text(7)
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 2, "stream": True}
    events = await sse_events(http, fake.url + CHAT_PATH, body)
    assert sum('"content":" tok' in e for e in events) == 7


async def test_priority_is_taken_and_recorded(fake: FakeVLLM, client: openai.AsyncOpenAI) -> None:
    # As vLLM 0.32 takes it, whatever its scheduling policy (see check_priority).
    for priority in (-3, 0, 9):
        await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=1, extra_body={"priority": priority}
        )
    await client.completions.create(model="fake-model", prompt="x", max_tokens=1)
    assert fake.behaviour.priorities == [-3, 0, 9, 0]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=1, extra_body={"priority": "high"}
        )
    assert caught.value.body["param"] == "body.priority"  # type: ignore[index]


async def test_hold_keeps_requests_until_released(
    fake: FakeVLLM, client: openai.AsyncOpenAI
) -> None:
    fake.behaviour.hold = asyncio.Event()
    held = [
        asyncio.create_task(
            client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=1)
        )
        for _ in range(4)
    ]
    await fake.behaviour.wait_until(lambda: fake.behaviour.generating == 4)
    assert not any(task.done() for task in held)
    fake.behaviour.hold.set()
    replies = await asyncio.gather(*held)
    assert [r.choices[0].message.content for r in replies] == [completion_text(1)] * 4
    assert (fake.behaviour.generating, fake.behaviour.most_generating) == (0, 4)
    await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=1)
    assert fake.behaviour.most_generating == 4


async def test_given_behaviour_drives_the_server() -> None:
    behaviour = FakeVLLMBehaviour(models=["m"], default_max_tokens=2)
    server = FakeVLLM(behaviour)
    await server.start()
    try:
        sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=5)
        result = await sdk.completions.create(model="m", prompt="x")
        assert result.choices[0].text == completion_text(2)
        await sdk.close()
    finally:
        await server.stop()
    assert behaviour.finished == 1


async def test_cli_serves_until_sigterm() -> None:
    argv = ["-m", "llmgw.fake_vllm", "--port", "0", "--model", "cli-model", "--tokens", "2"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ") + "/v1/models"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["cli-model"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
