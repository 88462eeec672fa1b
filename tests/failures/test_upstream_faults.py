"""The upstream fails: refuses, answers too late, resets or stalls mid-stream, or says
5xx/429. The client gets OpenAI's shape every time, the ledger says what happened, and
the gateway is healthy again once the upstream is."""

from __future__ import annotations

import json

import orjson
import pytest

from llmgw.config import ServerSettings
from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway, GatewayFactory, auth, post, sse_events, wait_healthy
from .conftest import assert_settled

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say three words"}]}
STREAM = orjson.dumps({**CHAT, "max_tokens": 10, "stream": True})


def error_of(raw: bytes) -> dict[str, object]:
    """The `error` object of an OpenAI-shaped error body (and nothing else in it)."""
    body = json.loads(raw)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


def last_event_error(raw: bytes) -> dict[str, object]:
    return error_of(sse_events(raw)[-1].removeprefix("data: ").encode())


async def test_refused_connections_are_502_and_the_requests_are_given_back(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    await fake.stop()
    url, body = f"{gateway.base_url}/chat/completions", orjson.dumps({**CHAT, "max_tokens": 1})
    for _ in range(3):
        status, headers, raw = await post(url, body, auth(api_key))
        assert status == 502
        assert error_of(raw)["code"] == "upstream_unavailable"
        assert headers["Content-Type"] == "application/json"
    await fake.start()  # the same port
    await wait_healthy(gateway.url, seconds=5)  # the upstream that came back was probed
    status, headers, _ = await post(url, body, auth(api_key))
    assert status == 200
    # Premium allows 100 a minute: the three that never reached vLLM cost nothing.
    assert headers["X-RateLimit-Remaining-Minute"] == "99"
    rows = await assert_settled(gateway, rows=4)
    assert [r["status_code"] for r in rows] == [502, 502, 502, 200]
    assert all(r["upstream"] is None and r["prompt_tokens"] == 0 for r in rows[:3])


async def test_no_headers_in_time_is_504_the_upstream_is_let_go_and_it_is_charged(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, upstream_timeout=0.3)
    )
    key = (await gateway.create_key(tier="premium"))["key"]
    fake.behaviour.headers_delay = 30
    url = f"{gateway.base_url}/chat/completions"
    status, _, raw = await post(url, orjson.dumps(CHAT), auth(key))
    assert status == 504
    assert error_of(raw)["code"] == "upstream_timeout"
    # The gateway closed the connection, so vLLM would stop working on the request.
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1, seconds=2)
    fake.behaviour.headers_delay = 0
    status, headers, _ = await post(url, orjson.dumps(CHAT), auth(key))
    assert status == 200
    # vLLM did receive the timed-out request (it may have worked on it): not refunded.
    assert headers["X-RateLimit-Remaining-Minute"] == "98"
    rows = await assert_settled(gateway, rows=2)
    assert [r["status_code"] for r in rows] == [504, 200]
    assert rows[0]["upstream"] == fake.url


async def test_reset_mid_stream_ends_the_stream_with_an_error_and_records_partial_usage(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.fail = "reset"
    fake.behaviour.fail_after_tokens = 3
    status, _, raw = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(api_key))
    assert status == 200  # the headers had gone out before the failure
    assert raw.endswith(b"\n\n")
    assert last_event_error(raw)["code"] == "upstream_error"
    assert sum('"content":" tok' in e for e in sse_events(raw)) == 3
    fake.behaviour.fail = None
    status, _, _ = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(api_key))
    assert status == 200
    rows = await assert_settled(gateway, rows=2)
    assert rows[0]["status_code"] == 502
    assert rows[0]["usage_source"] == "partial"
    assert rows[0]["completion_tokens"] == 3
    assert rows[0]["prompt_tokens"] > 0  # estimated: vLLM never reported its count
    assert (rows[1]["status_code"], rows[1]["usage_source"]) == (200, "reported")


async def test_reset_before_the_answer_is_502(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.fail = "reset"
    status, _, raw = await post(
        f"{gateway.base_url}/chat/completions", orjson.dumps(CHAT), auth(api_key)
    )
    assert status == 502
    assert error_of(raw)["type"] == "server_error"
    fake.behaviour.fail = None
    [row] = await assert_settled(gateway, rows=1)
    assert row["status_code"] == 502


async def test_vllm_error_event_mid_stream_is_normalised(
    gateway: Gateway, api_key: str, fake: FakeVLLM
) -> None:
    fake.behaviour.fail = "error"
    fake.behaviour.fail_after_tokens = 2
    _, _, raw = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(api_key))
    events = sse_events(raw)
    error = error_of(events[-2].removeprefix("data: ").encode())
    assert error["type"] == "server_error" and error["message"]
    assert events[-1] == "data: [DONE]"
    [row] = await assert_settled(gateway, rows=1)
    assert (row["status_code"], row["usage_source"]) == (500, "partial")


async def test_a_stalled_stream_is_cut_by_the_idle_timeout_and_the_upstream_closed(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, stream_idle_timeout=0.3)
    )
    key = (await gateway.create_key())["key"]
    fake.behaviour.fail = "stall"
    fake.behaviour.fail_after_tokens = 2
    _, _, raw = await post(f"{gateway.base_url}/chat/completions", STREAM, auth(key))
    assert last_event_error(raw)["code"] == "upstream_timeout"
    assert sum('"content":" tok' in e for e in sse_events(raw)) == 2
    # The gateway closed its upstream connection: the fake saw the stream aborted.
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1, seconds=2)
    assert fake.behaviour.open_streams == 0
    [row] = await assert_settled(gateway, rows=1)
    assert (row["status_code"], row["completion_tokens"]) == (504, 2)
    assert row["usage_source"] == "partial"


@pytest.mark.parametrize(
    ("status", "retry_after", "stream"),
    [
        (429, "7", False),
        (429, "7", True),
        (503, "30", False),
        (500, None, True),
        (502, None, False),
    ],
)
async def test_upstream_error_statuses_pass_in_openai_shape_with_retry_after(
    gateway: Gateway,
    api_key: str,
    fake: FakeVLLM,
    status: int,
    retry_after: str | None,
    stream: bool,
) -> None:
    fake.behaviour.fail = "http_error"
    fake.behaviour.http_error_status = status
    fake.behaviour.http_error_retry_after = retry_after
    fake.behaviour.http_error_times = 1
    body = STREAM if stream else orjson.dumps(CHAT)
    got, headers, raw = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert got == status
    assert headers.get("Retry-After") == retry_after
    assert headers["Content-Type"] == "application/json"
    error = error_of(raw)
    assert error["type"] == ("rate_limit_error" if status == 429 else "server_error")
    # The gateway's own limit headers still say what the key has left.
    assert headers["X-RateLimit-Remaining-Minute"] == "99"
    status_after, _, _ = await post(f"{gateway.base_url}/chat/completions", body, auth(api_key))
    assert status_after == 200
    rows = await assert_settled(gateway, rows=2)
    assert [r["status_code"] for r in rows] == [status, 200]
    assert rows[0]["completion_tokens"] == 0
