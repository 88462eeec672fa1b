"""What a client is told when an upstream fails, and what the ledger says of it: the
limit headers after a refund, no upstream internals in a 502, an upstream's error event
mid-stream (even in JSON the gateway cannot read) ending the stream as the error it is,
and a key pasted into `model` refused before it could be written down."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway, auth, post, sse_events, wait_healthy
from .conftest import assert_settled

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say three words"}]}
STREAM = orjson.dumps({**CHAT, "max_tokens": 10, "stream": True})


def message_of(raw: bytes) -> str:
    message: str = json.loads(raw)["error"]["message"]
    return message


async def test_the_502_for_an_unreachable_upstream_shows_what_is_left_after_the_refund(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    await fake.stop()
    url, body = f"{gateway.base_url}/chat/completions", orjson.dumps(CHAT)
    for _ in range(2):
        status, headers, _ = await post(url, body, auth(api_key))
        assert status == 502
        # Premium allows 100 a minute; a request no upstream saw costs nothing.
        assert headers["X-RateLimit-Remaining-Minute"] == "100"
        assert headers["X-RateLimit-Remaining-Hour"] == "1000"
        assert headers["x-ratelimit-remaining-requests"] == "100"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.base_url}/models", headers=auth(api_key)) as resp,
    ):
        assert resp.status == 502
        assert resp.headers["X-RateLimit-Remaining-Minute"] == "100"
    await fake.start()  # the same port
    await wait_healthy(gateway.url, seconds=5)
    await assert_settled(gateway, rows=3)


async def test_a_502_tells_the_client_what_happened_and_the_log_where(
    gateway: Gateway, api_key: str, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.behaviour.fail = "reset"  # the connection breaks before an answer
    status, _, raw = await post(
        f"{gateway.base_url}/chat/completions", orjson.dumps(CHAT), auth(api_key)
    )
    assert status == 502
    message = message_of(raw)
    assert fake.url not in message and str(fake.port) not in message
    assert "127.0.0.1" not in message
    assert message == "The model server failed to answer."
    warnings = [r.getMessage() for r in caplog.records if r.name == "llmgw.proxy"]
    assert any(fake.url in w for w in warnings), warnings
    fake.behaviour.fail = None
    await assert_settled(gateway, rows=1)


async def test_a_stream_broken_off_says_so_without_the_upstream_url(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "reset", 2
    _, _, raw = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(api_key))
    last = sse_events(raw)[-1].removeprefix("data: ").encode()
    assert message_of(last) == "The model server broke off the stream."
    assert str(fake.port) not in raw.decode()
    fake.behaviour.fail = None
    [row] = await assert_settled(gateway, rows=1)
    assert row["status_code"] == 502


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_an_upstream_error_page_is_logged_not_shown(
    gateway: Gateway, api_key: str, fake: FakeVLLM, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    page = b"<html><body>502 Bad Gateway: upstream 10.1.2.3:8100 refused</body></html>"
    fake.behaviour.fail, fake.behaviour.http_error_status = "http_error", 502
    fake.behaviour.http_error_body, fake.behaviour.http_error_times = page, 1
    body = STREAM if stream else orjson.dumps(CHAT)
    status, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 502
    assert headers["Content-Type"] == "application/json"
    assert message_of(raw) == "The model server answered with status 502."
    assert b"10.1.2.3" not in raw
    assert any("10.1.2.3" in r.getMessage() for r in caplog.records)
    await assert_settled(gateway, rows=1)


@pytest.mark.parametrize(
    ("event", "status"),
    [
        # Not JSON a strict parser reads: it used to go out raw while the ledger said 200.
        (b'data: {"error": {"message": "boom", "type": "X", "code": 1e999}}\n\n', 502),
        (
            b'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}\n\n',
            500,
        ),
        (b'data: {"object": "error", "message": "overloaded", "code": 503}\n\n', 503),
    ],
    ids=["unreadable", "vllm", "flat"],
)
async def test_an_error_event_mid_stream_ends_the_stream_and_is_recorded_as_that_error(
    gateway: Gateway, api_key: str, fake: FakeVLLM, event: bytes, status: int
) -> None:
    # What comes after the error (a chunk, here) must not reach the client.
    after = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":" AFTER"}}]}\n\n'
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "error", 3
    fake.behaviour.error_event = event + after
    got, _, raw = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(api_key))
    assert got == 200  # the stream had begun
    events = sse_events(raw)
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert b"AFTER" not in raw and b"1e999" not in raw
    assert sum('"content":" tok' in e for e in events) == 3
    [row] = await assert_settled(gateway, rows=1)
    assert (row["status_code"], row["usage_source"]) == (status, "partial")
    assert row["completion_tokens"] == 3


async def test_a_key_pasted_into_model_is_refused_and_never_stored(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    body = orjson.dumps({**CHAT, "model": f"fake-model {api_key}"})
    status, _, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status == 400
    error = json.loads(raw)["error"]
    assert (error["code"], error["param"]) == ("api_key_in_body", "model")
    assert api_key not in raw.decode()
    assert fake.behaviour.requests_to("/v1/chat/completions") == []
    [row] = await assert_settled(gateway, rows=1)
    assert row["model"] is None
    secret = api_key.removeprefix("sk-internal-").encode()
    for path in Path(gateway.settings.database_path).parent.glob("llmgw.db*"):
        assert secret not in path.read_bytes(), path
