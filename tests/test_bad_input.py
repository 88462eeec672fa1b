"""Requests the gateway must refuse: no key, a bad key, too much, malformed, not allowed.

Each refusal is checked where a client notices it (status, OpenAI-shaped JSON, headers),
where an admin notices it (the ledger row, or none for unknown callers), and where the
GPU bill notices it: the fake vLLM must not have seen the request. Afterwards the
gateway must still be healthy and serve a normal request.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import ServerSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import CLIENT, UPSTREAMS
from llmgw.times import iso_utc

from .conftest import FakeClock, Gateway, GatewayFactory, tiers
from .failures.wire import forwarded

MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RATE_HEADERS = (
    "X-RateLimit-Limit-Minute",
    "X-RateLimit-Remaining-Minute",
    "X-RateLimit-Limit-Hour",
    "X-RateLimit-Remaining-Hour",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error response with `status`."""
    raw = await resp.read()
    assert resp.status == status, raw
    assert resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert resp.headers.get("x-request-id")
    return error


async def chat(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, body: Any = None
) -> aiohttp.ClientResponse:
    resp = await http.post(
        f"{gateway.base_url}/chat/completions",
        json=CHAT if body is None else body,
        headers=bearer(key),
    )
    await resp.read()
    return resp


async def assert_healthy(http: aiohttp.ClientSession, gateway: Gateway, key: str) -> None:
    async with http.get(f"{gateway.url}/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    resp = await chat(http, gateway, key)
    assert resp.status == 200
    assert (await resp.json())["choices"]


def assert_refused_row(row: dict[str, Any], status: int, key_id: int) -> None:
    assert row["status_code"] == status
    assert row["api_key_id"] == key_id
    assert row["user_id"] == "alice"
    assert row["prompt_tokens"] == 0
    assert row["completion_tokens"] == 0
    assert row["usage_source"] == "estimated"
    assert row["upstream"] is None


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code", "secret"),
    [
        pytest.param({}, None, None, id="missing"),
        pytest.param({"x-api-key": "   "}, None, None, id="x-api-key-blank"),
        pytest.param(
            {"Authorization": "Basic c2stc2VjcmV0LXZhbHVl"},
            "invalid_api_key",
            "c2stc2VjcmV0LXZhbHVl",
            id="basic",
        ),
        pytest.param({"Authorization": "Bearer"}, "invalid_api_key", None, id="bearer-nothing"),
        pytest.param({"Authorization": "Bearer    "}, "invalid_api_key", None, id="bearer-blank"),
        pytest.param(
            {"Authorization": "sk-internal-nobearer"},
            "invalid_api_key",
            "sk-internal-nobearer",
            id="no-scheme",
        ),
        pytest.param(
            bearer("sk-internal-not-a-real-key"),
            "invalid_api_key",
            "sk-internal-not-a-real-key",
            id="unknown",
        ),
        pytest.param(
            {"x-api-key": "sk-internal-not-a-real-key"},
            "invalid_api_key",
            "sk-internal-not-a-real-key",
            id="x-api-key-unknown",
        ),
    ],
)
async def test_unauthenticated_requests_get_401_and_leave_no_trace(
    gateway: Gateway,
    api_key: str,
    fake: FakeVLLM,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    code: str | None,
    secret: str | None,
) -> None:
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        async with http.request(
            method, gateway.url + path, json=CHAT if method == "POST" else None, headers=headers
        ) as resp:
            error = await error_of(resp, 401)
            raw = await resp.read()
            assert error["code"] == code
            assert error["type"] == "invalid_request_error"
            for header in RATE_HEADERS:
                assert header not in resp.headers
            if secret is not None:
                assert secret.encode() not in raw
    assert forwarded(fake) == []
    assert await gateway.ledger_rows() == []
    await assert_healthy(http, gateway, api_key)


@pytest.mark.parametrize("scheme", ["Token", "Basic", "Bearer:", ""])
async def test_real_key_under_a_wrong_scheme_is_401_without_echo(
    gateway: Gateway, api_key: str, fake: FakeVLLM, http: aiohttp.ClientSession, scheme: str
) -> None:
    headers = {"Authorization": f"{scheme} {api_key}".strip()}
    async with http.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers) as r:
        error = await error_of(r, 401)
        assert api_key.encode() not in await r.read()
        assert all(api_key not in value for value in r.headers.values())
    assert error["code"] == "invalid_api_key"
    assert forwarded(fake) == []
    assert await gateway.ledger_rows() == []


async def test_both_key_headers_are_accepted(
    gateway: Gateway, api_key: str, http: aiohttp.ClientSession
) -> None:
    for headers in (
        bearer(api_key),
        {"x-api-key": api_key},
        {"Authorization": f"bearer {api_key}"},
    ):
        async with http.post(
            f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers
        ) as r:
            assert r.status == 200, await r.text()
            for header in RATE_HEADERS:
                assert header in r.headers


async def test_revoked_key_gets_401_naming_revocation(
    gateway: Gateway, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    created = await gateway.create_key("alice")
    assert (await chat(http, gateway, created["key"])).status == 200
    async with gateway.admin() as admin:
        await admin.revoke_key(created["id"])
    before = len(forwarded(fake))

    async with http.post(
        f"{gateway.base_url}/chat/completions", json=CHAT, headers=bearer(created["key"])
    ) as resp:
        error = await error_of(resp, 401)
        raw = await resp.read()
    assert "revoked" in error["message"].lower()
    assert error["code"] == "invalid_api_key"
    assert created["key"].encode() not in raw
    assert len(forwarded(fake)) == before
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [200]


async def test_expired_key_gets_401_naming_expiry(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    gateway: Gateway = await gateway_factory(clock=clock)
    created = await gateway.create_key(
        "alice", tier="premium", expires_at=iso_utc(clock.wall() + 60)
    )
    assert (await chat(http, gateway, created["key"])).status == 200
    clock.advance(59.9)
    assert (await chat(http, gateway, created["key"])).status == 200
    clock.advance(0.1)  # the moment it expires
    resp = await chat(http, gateway, created["key"])
    error = await error_of(resp, 401)
    assert "expired" in error["message"].lower()
    assert error["code"] == "invalid_api_key"
    assert created["key"] not in error["message"]
    # Only the answered requests reached the upstream and the ledger.
    rows = await gateway.ledger_rows()
    assert all(r["status_code"] == 200 for r in rows)
    assert len(forwarded(fake)) == len(rows)


# --- method and path -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nope",
        "/v2/chat/completions",
        "/v1/load_lora_adapter",  # vLLM development routes are never forwarded
        "/v1/completions/extra",
        "/tokenize/more",
        "/reset_prefix_cache",
        "/",
    ],
)
async def test_unknown_path_is_404_in_openai_shape(
    gateway: Gateway, api_key: str, fake: FakeVLLM, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.post(gateway.url + path, json=CHAT, headers=bearer(api_key)) as resp:
        error = await error_of(resp, 404)
    assert path in error["message"]
    assert forwarded(fake) == []
    await assert_healthy(http, gateway, api_key)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/health", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    gateway: Gateway,
    api_key: str,
    fake: FakeVLLM,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    allowed: str,
) -> None:
    async with http.request(method, gateway.url + path, headers=bearer(api_key)) as resp:
        await error_of(resp, 405)
        assert allowed in {m.strip() for m in resp.headers["Allow"].split(",")}
    assert forwarded(fake) == []


# --- the body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b'{"model": "fake-model", "messages": [', None, id="truncated"),
        pytest.param(b"model=fake-model", None, id="form-encoded"),
        pytest.param(b"\xff\xfe\x00garbage", None, id="not-utf8"),
        pytest.param(b'{"model": "fake-model"} trailing', None, id="trailing-data"),
        pytest.param(b"[1, 2, 3]", None, id="array"),
        pytest.param(b'"a string"', None, id="string"),
        pytest.param(b"null", None, id="null"),
        pytest.param(b"42", None, id="number"),
        pytest.param(b'{"model": 42, "messages": []}', "model", id="model-number"),
        pytest.param(b'{"model": ["fake-model"], "messages": []}', "model", id="model-list"),
        pytest.param(b'{"model": {"id": "x"}, "prompt": "x"}', "model", id="model-object"),
        pytest.param(
            b'{"model": "fake-model", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            None,
            id="nested-too-deep",
        ),
    ],
)
async def test_malformed_body_is_400_and_not_forwarded(
    gateway: Gateway,
    api_key: str,
    fake: FakeVLLM,
    http: aiohttp.ClientSession,
    body: bytes,
    param: str | None,
) -> None:
    created = await gateway.create_key("alice")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        async with http.post(
            gateway.url + path,
            data=body,
            headers=bearer(created["key"]) | {"Content-Type": "application/json"},
        ) as resp:
            error = await error_of(resp, 400)
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param
            for header in RATE_HEADERS:
                assert header in resp.headers
    assert forwarded(fake) == []
    rows = await gateway.ledger_rows()
    assert [r["endpoint"] for r in rows] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    ]
    for row in rows:
        assert_refused_row(row, 400, created["id"])
    await assert_healthy(http, gateway, api_key)


def padded_chat(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    empty = orjson.dumps(CHAT | {"messages": [{"role": "user", "content": ""}]})
    body = orjson.dumps(
        CHAT | {"messages": [{"role": "user", "content": "x" * (size - len(empty))}]}
    )
    assert len(body) == size
    return body


async def test_body_over_the_limit_is_413_and_at_the_limit_is_served(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, max_body_bytes=1024)
    )
    created = await gateway.create_key("alice", tier="premium")
    headers = bearer(created["key"]) | {"Content-Type": "application/json"}
    url = f"{gateway.base_url}/chat/completions"

    async with http.post(url, data=padded_chat(1024), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]

    async with http.post(url, data=padded_chat(1025), headers=headers) as resp:
        error = await error_of(resp, 413)
        for header in RATE_HEADERS:
            assert header in resp.headers
    assert "1024" in error["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        body = padded_chat(64 * 1024)
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    async with http.post(url, data=chunks(), headers=headers) as resp:
        await error_of(resp, 413)

    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [200, 413, 413]
    for row in rows[1:]:
        assert_refused_row(row, 413, created["id"])
    await assert_healthy(http, gateway, created["key"])


async def test_compressed_body_is_limited_by_its_decompressed_size(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, max_body_bytes=4096)
    )
    created = await gateway.create_key("alice", tier="premium")
    bomb = gzip.compress(padded_chat(1024 * 1024))
    assert len(bomb) < 4096
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        data=bomb,
        headers=bearer(created["key"])
        | {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ) as resp:
        await error_of(resp, 413)
    assert forwarded(fake) == []
    await assert_healthy(http, gateway, created["key"])


async def test_oversized_unauthenticated_body_is_401_without_a_row(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, max_body_bytes=1024)
    )
    async with http.post(
        f"{gateway.base_url}/chat/completions",
        data=padded_chat(8192),
        headers={"Content-Type": "application/json"},
    ) as resp:
        await error_of(resp, 401)
    assert forwarded(fake) == []
    assert await gateway.ledger_rows() == []


async def test_model_outside_the_keys_allowed_models_is_403(
    gateway: Gateway, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    created = await gateway.create_key("alice", allowed_models=[MODEL])

    for body in (CHAT | {"model": "other-model"}, {"messages": CHAT["messages"]}):
        resp = await chat(http, gateway, created["key"], body)
        error = await error_of(resp, 403)
        assert error["code"] == "model_not_allowed"
        assert error["param"] == "model"
        assert error["type"] == "permission_error"
        for header in RATE_HEADERS:
            assert header in resp.headers
    assert forwarded(fake) == []

    assert (await chat(http, gateway, created["key"])).status == 200
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [403, 403, 200]
    assert rows[0]["model"] == "other-model"
    for row in rows[:2]:
        assert_refused_row(row, 403, created["id"])


async def test_models_listing_shows_only_the_keys_models(
    gateway: Gateway, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    fake.behaviour.models = [MODEL, "other-model"]
    # The listing comes from the upstreams' lists as the prober last saw them.
    await gateway.app[UPSTREAMS].probe_all(gateway.app[CLIENT])
    created = await gateway.create_key("alice", allowed_models=["other-model"])
    async with http.get(f"{gateway.base_url}/models", headers=bearer(created["key"])) as resp:
        assert resp.status == 200
        listing = await resp.json()
    assert [m["id"] for m in listing["data"]] == ["other-model"]


# --- rate limits ---------------------------------------------------------------------


async def test_request_over_the_minute_limit_is_429_and_not_forwarded(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(tiers=tiers(free=(2, 100)))
    created = await gateway.create_key("alice", tier="free")
    first, second = [await chat(http, gateway, created["key"]) for _ in range(2)]
    assert (first.status, second.status) == (200, 200)
    assert first.headers["X-RateLimit-Remaining-Minute"] == "1"
    assert second.headers["X-RateLimit-Remaining-Minute"] == "0"

    refused = await chat(http, gateway, created["key"])
    error = await error_of(refused, 429)
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    headers = refused.headers
    assert headers["X-RateLimit-Limit-Minute"] == "2"
    assert headers["X-RateLimit-Remaining-Minute"] == "0"
    assert headers["X-RateLimit-Limit-Hour"] == "100"
    assert headers["X-RateLimit-Remaining-Hour"] == "98"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]
    retry_ms = int(headers["retry-after-ms"])
    assert 25_000 <= retry_ms <= 30_000  # one request back at 2 per minute
    assert headers["Retry-After"] == str(math.ceil(retry_ms / 1000))
    assert f"{headers['Retry-After']}s" in error["message"]

    assert forwarded(fake) == [("POST", "/v1/chat/completions")] * 2
    rows = await gateway.ledger_rows()
    assert [r["status_code"] for r in rows] == [200, 200, 429]
    assert_refused_row(rows[2], 429, created["id"])
    assert rows[2]["model"] in (None, MODEL)


async def test_request_over_the_hour_limit_is_429(
    gateway_factory: GatewayFactory, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(tiers=tiers(free=(10, 2)))
    created = await gateway.create_key("alice")
    assert [(await chat(http, gateway, created["key"])).status for _ in range(2)] == [200, 200]
    refused = await chat(http, gateway, created["key"])
    error = await error_of(refused, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert "hour" in error["message"]
    assert refused.headers["X-RateLimit-Remaining-Hour"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert 1700 <= int(refused.headers["Retry-After"]) <= 1800
    assert len(forwarded(fake)) == 2


async def test_a_refused_key_does_not_limit_another(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(tiers=tiers(free=(1, 100)))
    alice = await gateway.create_key("alice")
    bob = await gateway.create_key("bob")
    assert (await chat(http, gateway, alice["key"])).status == 200
    assert (await chat(http, gateway, alice["key"])).status == 429
    assert (await chat(http, gateway, bob["key"])).status == 200


# --- the wire --------------------------------------------------------------------------


async def test_garbage_on_the_wire_gets_400_and_the_gateway_keeps_serving(
    gateway: Gateway, api_key: str, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    for garbage in (b"GARBAGE\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nHost\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(garbage)
            await writer.drain()
            async with asyncio.timeout(5):
                status_line = await reader.readline()
        finally:
            writer.close()
        assert re.match(rb"HTTP/1\.[01] 400 ", status_line), status_line
    assert forwarded(fake) == []
    await assert_healthy(http, gateway, api_key)


async def test_oversized_header_is_refused_without_echoing_or_logging_the_key(
    gateway: Gateway,
    api_key: str,
    fake: FakeVLLM,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client that glues something long onto its key (a misconfigured SDK, a proxy)
    # must not get the key echoed back, nor have it written to the gateway's log.
    headers = {"Authorization": f"Bearer {api_key} {'x' * 20_000}"}
    async with http.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers) as r:
        raw = await r.read()
        assert r.status in (400, 431)
    assert json.loads(raw)["error"]["code"] == "malformed_request"
    assert api_key.encode() not in raw
    assert api_key not in caplog.text
    assert forwarded(fake) == []
    await assert_healthy(http, gateway, api_key)


async def test_every_response_carries_a_request_id(
    gateway: Gateway, api_key: str, http: aiohttp.ClientSession
) -> None:
    seen = set()
    for method, path, headers in (
        ("GET", "/health", {}),
        ("GET", "/metrics", {}),
        ("GET", "/nope", {}),
        ("GET", "/v1/chat/completions", {}),
        ("POST", "/v1/chat/completions", {}),
        ("GET", "/v1/models", bearer(api_key)),
    ):
        async with http.request(method, gateway.url + path, headers=headers) as resp:
            request_id = resp.headers.get("x-request-id")
            assert request_id, f"{method} {path} ({resp.status}) has no x-request-id"
            seen.add(request_id)
    assert len(seen) == 6
