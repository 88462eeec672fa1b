"""`stream` in any spelling vLLM accepts: the gateway never mistakes a stream for an
answer. It refuses a `stream` that is not a JSON boolean (as OpenAI's API does: vLLM
itself would stream for "yes"), and an event stream that comes back anyway is relayed
and accounted as one, so generated tokens are never billed as 0."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway, auth, post, sse_events
from .conftest import assert_settled

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say three words"}]}


@pytest.mark.parametrize("stream", ["yes", "true", 1, "1", 1.0, [True], {"on": True}])
async def test_a_stream_flag_that_is_not_a_boolean_is_refused_before_vllm(
    gateway: Gateway, api_key: str, fake: FakeVLLM, stream: Any
) -> None:
    body = orjson.dumps({**CHAT, "max_tokens": 50, "stream": stream})
    status, _, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 400
    error = json.loads(raw)["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "stream",
        "invalid_type",
        "invalid_request_error",
    )
    assert "expected a boolean" in error["message"]
    assert fake.behaviour.requests_to("/v1/chat/completions") == []
    await assert_settled(gateway, rows=1)


@pytest.mark.parametrize("stream", [False, None])
async def test_false_and_null_are_answers(
    gateway: Gateway, api_key: str, fake: FakeVLLM, stream: bool | None
) -> None:
    body = orjson.dumps({**CHAT, "max_tokens": 5, "stream": stream})
    status, _, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 200
    assert json.loads(raw)["usage"]["completion_tokens"] == 5
    [row] = await assert_settled(gateway, rows=1)
    assert (row["completion_tokens"], row["usage_source"]) == (5, "reported")


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_an_event_stream_the_request_did_not_ask_for_is_relayed_and_counted(
    gateway: Gateway, api_key: str, fake: FakeVLLM, path: str
) -> None:
    fake.behaviour.stream_regardless = True  # an upstream that streams anyway
    prompt = {"prompt": "Say three words"} if path == "/completions" else {}
    body = orjson.dumps({**CHAT, **prompt, "max_tokens": 12})
    status, headers, raw = await post(f"{gateway.base_url}{path}", body, auth(api_key))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "data: [DONE]"
    # The gateway did not ask this upstream for usage, so it counted the tokens it relayed.
    [row] = await assert_settled(gateway, rows=1)
    assert row["completion_tokens"] == 12
    assert row["usage_source"] == "estimated"
    assert row["prompt_tokens"] > 0
