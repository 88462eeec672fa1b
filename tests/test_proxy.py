"""The `/v1` request path at the byte level: what goes upstream, what comes back, what
the ledger records."""

from __future__ import annotations

import json
import re

import aiohttp
import orjson
import pytest

from llmgw.config import UpstreamSettings
from llmgw.fake_vllm import FakeVLLM, count_prompt_tokens

from .conftest import Gateway, GatewayFactory, auth, normalised, post, sse_events
from .failures.wire import forwarded

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say three words"}]}


async def test_non_streaming_forwards_the_body_bytes_and_records_reported_usage(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    # Odd spacing and key order: the upstream must receive exactly these bytes.
    body = (
        b'{ "messages": [{"role": "user", "content": "Say three words"}],'
        b'  "model": "fake-model", "max_tokens": 3 }'
    )
    status, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 200
    upstream = fake.behaviour.requests_to("/v1/chat/completions")[-1]
    assert upstream.body == body
    response = json.loads(raw)
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == " tok0 tok1 tok2"
    prompt = count_prompt_tokens(json.loads(body))
    assert response["usage"]["prompt_tokens"] == prompt
    [row] = await gateway.ledger_rows()
    assert row["status_code"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, 3)
    assert row["usage_source"] == "reported"
    assert row["model"] == "fake-model"
    assert row["upstream"] == fake.url
    assert row["user_id"] == "alice"
    assert row["endpoint"] == "/v1/chat/completions"
    assert row["request_id"] == headers["x-request-id"]
    assert row["ttft_ms"] is not None and row["duration_ms"] >= row["ttft_ms"]


async def test_the_clients_key_never_goes_upstream(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(
        upstreams=(UpstreamSettings(fake.url, api_key="upstream-secret"),)
    )
    key = (await gateway.create_key())["key"]
    status, headers, _ = await post(
        f"{gateway.base_url}/completions?trace=1",
        orjson.dumps({"model": "fake-model", "prompt": "hi", "max_tokens": 2}),
        {"x-api-key": key, "Cookie": "session=1", "X-Custom": "x"},
    )
    assert status == 200
    upstream = fake.behaviour.requests_to("/v1/completions")[-1]
    sent = {k.lower(): v for k, v in upstream.headers.items()}
    assert sent["authorization"] == "Bearer upstream-secret"
    assert key not in repr(upstream.headers)
    assert "x-api-key" not in sent and "cookie" not in sent and "x-custom" not in sent
    assert sent["x-request-id"] == headers["x-request-id"]


async def test_query_string_is_forwarded(gateway: Gateway, api_key: str, fake: FakeVLLM) -> None:
    body = orjson.dumps({"model": "fake-model", "prompt": "x", "max_tokens": 1})
    status, _, _ = await post(
        f"{gateway.base_url}/completions?a=1&b=two%20words", body, auth(api_key)
    )
    assert status == 200
    forwarded = fake.behaviour.requests_to("/v1/completions")[-1]
    assert forwarded.query == "a=1&b=two%20words"


async def direct_stream(fake: FakeVLLM, body: bytes) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 200
        return sse_events(await resp.read())


async def test_stream_without_include_usage_looks_exactly_like_vllm(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    body = orjson.dumps({**CHAT, "max_tokens": 4, "stream": True})
    status, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    through_gateway = sse_events(raw)
    # The gateway asked vLLM for usage, by splicing the option onto the client's bytes...
    upstream = fake.behaviour.requests_to("/v1/chat/completions")[-1]
    assert upstream.body == body[:-1] + b',"stream_options":{"include_usage":true}}'
    # ...and removed the usage chunk again: the client sees what vLLM would send it.
    assert normalised(through_gateway) == normalised(await direct_stream(fake, body))
    assert through_gateway[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in through_gateway)
    [row] = await gateway.ledger_rows()
    assert row["usage_source"] == "reported"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (count_prompt_tokens(CHAT), 4)


async def test_stream_with_include_usage_is_passed_through_untouched(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    body = orjson.dumps(
        {**CHAT, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    )
    _, _, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert fake.behaviour.requests_to("/v1/chat/completions")[-1].body == body
    events = sse_events(raw)
    assert normalised(events) == normalised(await direct_stream(fake, body))
    usage_chunk = json.loads(events[-2].removeprefix("data: "))
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2
    [row] = await gateway.ledger_rows()
    assert row["completion_tokens"] == 2 and row["usage_source"] == "reported"


async def test_stream_options_without_usage_are_rewritten_and_the_client_sees_no_usage(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    options = {"include_usage": False, "continuous_usage_stats": True}
    body = orjson.dumps({**CHAT, "max_tokens": 3, "stream": True, "stream_options": options})
    _, _, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    sent = fake.behaviour.requests_to("/v1/chat/completions")[-1].json
    assert sent is not None
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}
    events = sse_events(raw)
    assert normalised(events) == normalised(await direct_stream(fake, body))
    assert not any('"usage"' in e for e in events)
    [row] = await gateway.ledger_rows()
    assert row["completion_tokens"] == 3 and row["usage_source"] == "reported"


async def test_text_completion_stream(gateway: Gateway, api_key: str, fake: FakeVLLM) -> None:
    body = orjson.dumps(
        {"model": "fake-model", "prompt": "one two", "max_tokens": 5, "stream": True}
    )
    _, _, raw = await post(f"{gateway.base_url}/completions", body, auth(api_key))
    events = sse_events(raw)
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == " tok0 tok1 tok2 tok3 tok4"
    assert events[-1] == "data: [DONE]"
    [row] = await gateway.ledger_rows()
    assert row["completion_tokens"] == 5 and row["usage_source"] == "reported"


async def test_embeddings_record_prompt_tokens(gateway: Gateway, api_key: str) -> None:
    body = {"model": "fake-model", "input": ["alpha beta", "gamma"]}
    status, _, raw = await post(f"{gateway.base_url}/embeddings", orjson.dumps(body), auth(api_key))
    assert status == 200
    response = json.loads(raw)
    assert len(response["data"]) == 2
    [row] = await gateway.ledger_rows()
    assert row["prompt_tokens"] == response["usage"]["prompt_tokens"] > 0
    assert row["completion_tokens"] == 0 and row["usage_source"] == "reported"


async def test_vllm_errors_arrive_in_openai_shape(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    body = orjson.dumps({**CHAT, "max_tokens": 10**6})
    status, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["message"].startswith("max_tokens=1000000 cannot be greater than max_model_len")
    assert error["type"] == "invalid_request_error"  # vLLM said "BadRequestError"
    assert error["param"] == "max_tokens"
    assert set(error) == {"message", "type", "param", "code"}
    assert fake.behaviour.requests_to("/v1/chat/completions")
    [row] = await gateway.ledger_rows()
    assert row["status_code"] == 400 and row["prompt_tokens"] == 0


async def test_a_model_no_upstream_serves_is_404_from_the_gateway_uncharged(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    body = orjson.dumps({**CHAT, "model": "no-such-model"})
    status, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 404
    error = json.loads(raw)["error"]
    # vLLM's words, and OpenAI's type and code.
    assert error == {
        "message": "The model `no-such-model` does not exist. Valid aliases: fake-model.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert fake.behaviour.requests_to("/v1/chat/completions") == []  # never asked
    assert headers["X-RateLimit-Remaining-Minute"] == "100"  # nor charged
    [row] = await gateway.ledger_rows()
    assert (row["status_code"], row["model"], row["upstream"]) == (404, "no-such-model", None)


async def test_failover_to_the_next_upstream(
    gateway_factory: GatewayFactory, fake: FakeVLLM, unused_tcp_port: int
) -> None:
    dead = UpstreamSettings(f"http://127.0.0.1:{unused_tcp_port}")
    gateway = await gateway_factory(upstreams=(dead, UpstreamSettings(fake.url)))
    key = (await gateway.create_key())["key"]
    for _ in range(3):
        status, _, _ = await post(
            f"{gateway.base_url}/chat/completions", orjson.dumps(CHAT), auth(key)
        )
        assert status == 200
    rows = await gateway.ledger_rows()
    assert [r["upstream"] for r in rows] == [fake.url] * 3


async def test_models_are_merged_and_limited_to_the_keys_models(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    other = FakeVLLM()
    other.behaviour.models = ["other-model", "fake-model"]
    await other.start()
    try:
        gateway = await gateway_factory(
            upstreams=(UpstreamSettings(fake.url), UpstreamSettings(other.url))
        )
        everything = (await gateway.create_key("bob"))["key"]
        limited = (await gateway.create_key("carol", allowed_models=["other-model"]))["key"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway.base_url}/models", headers=auth(everything)) as r:
                all_ids = [m["id"] for m in (await r.json())["data"]]
            async with session.get(f"{gateway.base_url}/models", headers=auth(limited)) as r:
                limited_ids = [m["id"] for m in (await r.json())["data"]]
        assert sorted(all_ids) == ["fake-model", "other-model"]
        assert limited_ids == ["other-model"]
        # A request for another model is refused before it reaches any upstream.
        before = len(forwarded(fake)) + len(forwarded(other))
        status, _, raw = await post(
            f"{gateway.base_url}/chat/completions", orjson.dumps(CHAT), auth(limited)
        )
        assert status == 403 and json.loads(raw)["error"]["code"] == "model_not_allowed"
        assert len(forwarded(fake)) + len(forwarded(other)) == before
        # Routing by model: other-model only exists on the second upstream.
        body = orjson.dumps({**CHAT, "model": "other-model", "max_tokens": 1})
        status, _, _ = await post(f"{gateway.base_url}/chat/completions", body, auth(limited))
        assert status == 200
        assert other.behaviour.requests_to("/v1/chat/completions")
    finally:
        await other.stop()


async def test_every_authenticated_response_carries_the_limit_headers(
    gateway: Gateway, api_key: str
) -> None:
    _, headers, _ = await post(
        f"{gateway.base_url}/chat/completions", orjson.dumps({**CHAT, "model": 5}), auth(api_key)
    )
    assert headers["X-RateLimit-Limit-Minute"] == "100"
    assert headers["X-RateLimit-Limit-Hour"] == "1000"
    # A 400 is answered before the request is admitted: it costs nothing.
    assert headers["x-ratelimit-remaining-requests"] == "100"
    assert re.fullmatch(r"\d+(ms|(\.\d+)?s)", headers["x-ratelimit-reset-requests"])


@pytest.mark.parametrize("stream", [False, True])
async def test_health_reports_upstreams_and_ledger(
    gateway: Gateway, api_key: str, stream: bool
) -> None:
    await post(
        f"{gateway.base_url}/chat/completions",
        orjson.dumps({**CHAT, "max_tokens": 1, "stream": stream}),
        auth(api_key),
    )
    await gateway.flush_ledger()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/health") as resp:
            assert resp.status == 200
            health = await resp.json()
        async with session.get(f"{gateway.url}/metrics") as resp:
            metrics = await resp.text()
    assert health["status"] == "ok"
    assert health["database"]["ok"] is True
    assert health["ledger"]["written"] == 1
    assert health["upstreams"][0]["healthy"] is True
    # The request, and the /health call just before.
    assert 'llmgw_responses_total{code="200"} 2' in metrics
