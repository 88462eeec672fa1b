"""Issue 16's routes through the gateway, with the official SDKs where there is one: the
Responses API (`openai`), Anthropic's Messages API (`anthropic`, its exceptions from the
gateway's own refusals), and raw HTTP for tokenize, rerank and score. Each counts into
the key's limits and the ledger with vLLM's own usage."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from llmgw.config import TierSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.multipart import boundary_of, text_field
from llmgw.stored import StoredResponses

from .conftest import FakeClock, Gateway, GatewayFactory, auth, post
from .failures.conftest import assert_settled

MODEL = "fake-model"
TEXT = "Tell me about the gateway"


def openai_client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def anthropic_client(gateway: Gateway, key: str) -> anthropic.AsyncAnthropic:
    # Anthropic clients send the key as x-api-key, to the base URL without /v1.
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)


def charged(row: dict[str, Any]) -> tuple[int, int]:
    return row["prompt_tokens"], row["completion_tokens"]


# --- the Responses API -----------------------------------------------------------------


async def test_a_response_is_answered_and_counted(gateway: Gateway, api_key: str) -> None:
    async with openai_client(gateway, api_key) as client:
        response = await client.responses.create(model=MODEL, input=TEXT, max_output_tokens=4)
    assert response.output_text
    assert response.usage is not None
    [row] = await assert_settled(gateway, rows=1)
    assert row["endpoint"] == "/v1/responses"
    assert row["usage_source"] == "reported"
    assert charged(row) == (response.usage.input_tokens, response.usage.output_tokens)
    assert response.usage.output_tokens == 4


async def test_a_streamed_response_is_relayed_and_counted(gateway: Gateway, api_key: str) -> None:
    async with openai_client(gateway, api_key) as client:
        stream = await client.responses.create(
            model=MODEL, input=TEXT, max_output_tokens=3, stream=True
        )
        events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    [row] = await assert_settled(gateway, rows=1)
    assert row["usage_source"] == "reported"
    assert charged(row) == (usage.input_tokens, usage.output_tokens)


async def test_a_stored_response_is_retrieved_only_by_the_key_that_made_it(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.enable_responses_store = True  # vLLM's VLLM_ENABLE_RESPONSES_API_STORE
    other = (await gateway.create_key("bob", tier="premium"))["key"]
    async with openai_client(gateway, api_key) as client:
        made = await client.responses.create(
            model=MODEL, input=TEXT, max_output_tokens=2, store=True
        )
        again = await client.responses.retrieve(made.id)
    assert again.id == made.id
    assert again.output_text == made.output_text
    async with openai_client(gateway, other) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel(made.id)
    async with openai_client(gateway, api_key) as client:
        # The maker's cancel reaches the upstream, which answers for itself (vLLM
        # cancels only background responses).
        with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous"):
            await client.responses.cancel(made.id)
    async with openai_client(gateway, api_key) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_nobody_made_this")
    # Only the maker's retrieval reached vLLM: the others were answered by the gateway.
    assert len(fake.behaviour.requests_to(f"/v1/responses/{made.id}")) == 1
    assert len(fake.behaviour.requests_to(f"/v1/responses/{made.id}/cancel")) == 1
    assert fake.behaviour.requests_to("/v1/responses/resp_nobody_made_this") == []
    rows = await assert_settled(gateway, rows=6)
    # One ledger endpoint for each route, whatever the id.
    assert [r["endpoint"] for r in rows[1:]] == [
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/cancel",
        "/v1/responses/{response_id}/cancel",
        "/v1/responses/{response_id}",
    ]
    assert [charged(r) for r in rows[1:]] == [(0, 0)] * 5  # charged as requests


async def test_responses_count_into_the_token_limit(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    tiers = {"free": TierSettings(100, 1000, tokens_per_minute=10_000)}
    gateway: Gateway = await gateway_factory(tiers=tiers)
    key = (await gateway.create_key("alice", tier="free"))["key"]
    async with openai_client(gateway, key) as client:
        raw = await client.responses.with_raw_response.create(
            model=MODEL, input=TEXT, max_output_tokens=5
        )
        response = raw.parse()
        after = await client.responses.with_raw_response.create(
            model=MODEL, input=TEXT, max_output_tokens=5
        )
    assert response.usage is not None
    used = response.usage.input_tokens + response.usage.output_tokens
    # The second request's headers: the first one's reservation settled at its usage,
    # the second's estimate taken.
    reserved_now = 10_000 - int(after.headers["x-ratelimit-remaining-tokens"]) - used
    assert 5 <= reserved_now <= 5 + len(TEXT)  # its max_output_tokens and its prompt
    sent = fake.behaviour.requests_to("/v1/responses")[-1].json
    assert isinstance(sent, dict) and sent["max_output_tokens"] == 5


# --- Anthropic's Messages API ----------------------------------------------------------


async def test_a_message_is_answered_and_counted(gateway: Gateway, api_key: str) -> None:
    async with anthropic_client(gateway, api_key) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": TEXT}]
        )
    assert message.type == "message"
    assert message.content
    [row] = await assert_settled(gateway, rows=1)
    assert row["endpoint"] == "/v1/messages"
    assert row["usage_source"] == "reported"
    assert charged(row) == (message.usage.input_tokens, message.usage.output_tokens)
    assert message.usage.output_tokens == 4


async def test_a_streamed_message_is_relayed_and_counted(gateway: Gateway, api_key: str) -> None:
    async with (
        anthropic_client(gateway, api_key) as client,
        client.messages.stream(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": TEXT}]
        ) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text
    [row] = await assert_settled(gateway, rows=1)
    assert row["usage_source"] == "reported"
    assert charged(row) == (final.usage.input_tokens, final.usage.output_tokens)
    assert final.usage.output_tokens == 3


async def test_count_tokens_is_charged_as_a_request(gateway: Gateway, api_key: str) -> None:
    async with anthropic_client(gateway, api_key) as client:
        counted = await client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": TEXT}]
        )
    assert counted.input_tokens > 0
    [row] = await assert_settled(gateway, rows=1)
    assert (row["endpoint"], charged(row)) == ("/v1/messages/count_tokens", (0, 0))


async def test_the_gateways_refusals_are_anthropic_exceptions(
    gateway_factory: GatewayFactory,
) -> None:
    tiers = {"free": TierSettings(1, 100)}
    gateway: Gateway = await gateway_factory(tiers=tiers)
    key = (await gateway.create_key("alice", tier="free", allowed_models=[MODEL]))["key"]
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": TEXT}]
    async with anthropic_client(gateway, "sk-internal-not-a-key") as client:
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            await client.messages.create(model=MODEL, max_tokens=2, messages=messages)
    assert unknown.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    async with anthropic_client(gateway, key) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            await client.messages.create(model="another-model", max_tokens=2, messages=messages)
        assert "may not use" in str(forbidden.value)
        await client.messages.create(model=MODEL, max_tokens=2, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=MODEL, max_tokens=2, messages=messages)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    body = limited.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in body["error"]["message"]


# --- tokenize, rerank, score -----------------------------------------------------------


async def test_tokenize_and_detokenize_are_charged_as_requests(
    gateway: Gateway, api_key: str
) -> None:
    status, _, raw = await post(
        f"{gateway.url}/tokenize", orjson.dumps({"model": MODEL, "prompt": TEXT}), auth(api_key)
    )
    assert status == 200, raw
    tokens = orjson.loads(raw)["tokens"]
    status, _, raw = await post(
        f"{gateway.url}/detokenize",
        orjson.dumps({"model": MODEL, "tokens": tokens}),
        auth(api_key),
    )
    assert status == 200, raw
    assert isinstance(orjson.loads(raw)["prompt"], str)
    rows = await assert_settled(gateway, rows=2)
    assert [(r["endpoint"], charged(r)) for r in rows] == [
        ("/tokenize", (0, 0)),
        ("/detokenize", (0, 0)),
    ]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
async def test_rerank_counts_its_prompt_tokens(gateway: Gateway, api_key: str, path: str) -> None:
    body = {"model": MODEL, "query": "gateway", "documents": ["one text", "another text"]}
    status, _, raw = await post(f"{gateway.url}{path}", orjson.dumps(body), auth(api_key))
    assert status == 200, raw
    answer = orjson.loads(raw)
    assert len(answer["results"]) == 2
    [row] = await assert_settled(gateway, rows=1)
    assert row["endpoint"] == path
    assert charged(row) == (answer["usage"]["prompt_tokens"], 0)
    assert row["usage_source"] == "reported"


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
async def test_score_counts_its_prompt_tokens(gateway: Gateway, api_key: str, path: str) -> None:
    body = {"model": MODEL, "text_1": "gateway", "text_2": ["one text", "another text"]}
    status, _, raw = await post(f"{gateway.url}{path}", orjson.dumps(body), auth(api_key))
    assert status == 200, raw
    answer = orjson.loads(raw)
    assert len(answer["data"]) == 2
    [row] = await assert_settled(gateway, rows=1)
    assert charged(row) == (answer["usage"]["prompt_tokens"], 0)


# --- audio -----------------------------------------------------------------------------


async def test_a_transcription_is_relayed_and_charged_as_a_request(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway: Gateway = await gateway_factory()
    key = (await gateway.create_key("alice", tier="premium", allowed_models=[MODEL]))["key"]
    audio = b"\0" * 70_000  # three seconds to the fake
    async with openai_client(gateway, key) as client:
        result = await client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio))
        assert result.text
        # (The SDK deprecates translations: the same upload by hand.)
        form = aiohttp.FormData()
        form.add_field("model", MODEL)
        form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.base_url}/audio/translations", data=form, headers=auth(key)
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["text"]
        with pytest.raises(openai.PermissionDeniedError):  # the form's model is read
            await client.audio.transcriptions.create(model="another", file=("a.wav", audio))
    [sent] = fake.behaviour.requests_to("/v1/audio/transcriptions")
    assert audio in sent.body  # the upload went upstream as received
    rows = await assert_settled(gateway, rows=3)
    assert [(r["endpoint"], r["status_code"], charged(r)) for r in rows] == [
        ("/v1/audio/transcriptions", 200, (0, 0)),
        ("/v1/audio/translations", 200, (0, 0)),
        ("/v1/audio/transcriptions", 403, (0, 0)),
    ]
    assert rows[0]["model"] == MODEL


async def test_an_upload_that_is_no_form_is_refused(gateway: Gateway, api_key: str) -> None:
    status, _, raw = await post(
        f"{gateway.url}/v1/audio/transcriptions", b'{"model": "fake-model"}', auth(api_key)
    )
    assert status == 400
    assert "multipart/form-data" in orjson.loads(raw)["error"]["message"]


def test_the_model_is_read_from_the_form_without_the_file_fooling_it() -> None:
    boundary = b"xyz"
    body = (
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="file"; filename="model.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
        b'name="model"\r\n\r\nnot-this\r\n'  # a file that says it
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n'
        b"whisper-large\r\n"
        b"--xyz--\r\n"
    )
    assert boundary_of("multipart/form-data; boundary=xyz") == boundary
    assert boundary_of("application/json") is None
    assert text_field(body, boundary, "model") == "whisper-large"
    assert text_field(body, boundary, "language") is None
    assert text_field(body[: body.index(b"whisper")], boundary, "model") is None  # cut off


# --- which upstream made a response ----------------------------------------------------


def test_made_responses_are_remembered_within_bounds(clock: FakeClock) -> None:
    made = StoredResponses(clock.monotonic, limit=2, ttl=60)
    made.remember("resp_a", "http://gpu1", 1)
    made.remember("resp_b", "http://gpu2", 1)
    assert made.upstream_of("resp_a", 1) == "http://gpu1"
    assert made.upstream_of("resp_a", 2) is None  # another key: as if unknown
    made.remember("resp_c", "http://gpu1", 2)  # over the limit: the oldest goes
    assert (made.upstream_of("resp_a", 1), len(made)) == (None, 2)
    clock.advance(61)
    assert made.upstream_of("resp_c", 2) is None
    assert len(made) == 0


async def test_a_response_stream_the_client_leaves_is_charged_what_was_produced(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.token_delay = 0.05
    body = {"model": MODEL, "input": TEXT, "max_output_tokens": 50, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.base_url}/responses",
            data=orjson.dumps(body),
            headers=auth(api_key) | {"Content-Type": "application/json"},
        ) as resp,
    ):
        seen = 0
        async for line in resp.content:
            seen += line.startswith(b"event: response.output_text.delta")
            if seen == 3:
                break
    [row] = await assert_settled(gateway, rows=1)
    assert (row["status_code"], row["usage_source"]) == (499, "partial")
    assert 3 <= row["completion_tokens"] < 50


async def test_claude_codes_headers_are_taken_on_the_messages_api(
    gateway: Gateway, api_key: str
) -> None:
    # ANTHROPIC_API_KEY: the key in x-api-key, with anthropic-version (the SDK of this
    # version sends Authorization: Bearer, which the tests above use).
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": TEXT}]}
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    status, _, raw = await post(f"{gateway.url}/v1/messages?beta=true", orjson.dumps(body), headers)
    assert status == 200, raw
    assert orjson.loads(raw)["type"] == "message"
    status, _, raw = await post(
        f"{gateway.url}/v1/messages", orjson.dumps(body), {"anthropic-version": "2023-06-01"}
    )
    assert status == 401
    assert orjson.loads(raw)["error"]["type"] == "authentication_error"
    await assert_settled(gateway, rows=1)  # the 401 named no key: no row
