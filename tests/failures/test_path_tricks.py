"""Requests that try to reach more than the allow-list: dot segments, encoded slashes,
doubled slashes, an absolute-form target naming another host, query smuggling, CR/LF
in the headers the gateway forwards (Content-Type, Accept, User-Agent), and vLLM's
routes that are not forwarded (its development routes, its own /metrics, /version).
Each is refused in OpenAI's shape (404 for a path, 400 for bytes the parser refuses),
or, where it is a legitimate request after all, forwarded exactly as the route says
and no further. What the fake vLLM recorded is the proof.

`tests/test_bad_input.py` already covers POST to /v1/load_lora_adapter, /tokenize/more and
/reset_prefix_cache; `tests/test_proxy.py` that the key, cookies and other headers stay
behind and that an ordinary query string is forwarded.
"""

from __future__ import annotations

import pytest

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway
from .conftest import assert_settled
from .wire import CHAT_BODY, Reply, exchange, forwarded, premium_key, request


def assert_not_found(reply: Reply) -> None:
    assert reply.status == 404, reply
    error = reply.error()
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid URL (")
    # A 404 is decided before any handler: no key was looked at, so no limit was spent.
    assert "X-RateLimit-Limit-Minute" not in reply.headers


# --- the path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/../admin/api/keys"),
        ("GET", "/v1/%2e%2e/admin/api/keys"),
        ("GET", "/admin/api/../../v1/models"),
        ("POST", "/v1/../v1/chat/completions"),
        ("POST", "/v1/./chat/completions"),
        ("POST", "/v1/chat%2Fcompletions"),
        ("POST", "/v1%2Fchat%2Fcompletions"),
        ("POST", "/v1/chat%2fcompletions"),
        ("POST", "//v1/chat/completions"),
        ("POST", "/v1//chat/completions"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/V1/chat/completions"),
        ("POST", "/v1/chat/completions;x=1"),
        ("POST", "/v1/chat/completions%00"),
        ("POST", "/v1/chat/completions%20"),
    ],
)
async def test_path_tricks_are_404_and_never_forwarded(
    gateway: Gateway, fake: FakeVLLM, method: str, target: str
) -> None:
    key = await premium_key(gateway)
    body = b"" if method == "GET" else CHAT_BODY
    assert_not_found(await exchange(gateway, request(target, key=key, method=method, body=body)))
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


async def test_an_absolute_form_target_reaches_the_configured_upstream_only(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    # HTTP/1.1 allows a full URL as the target. Its host must not pick the upstream
    # (an open proxy), and neither may a Host header.
    key = await premium_key(gateway)
    target = "http://internal-only.example:8100/v1/chat/completions"
    data = request(target, key=key, headers=[b"X-Forwarded-Host: internal-only.example"])
    reply = await exchange(gateway, data.replace(b"Host: gateway", b"Host: internal-only"))
    assert reply.status == 200, reply
    [sent] = fake.behaviour.requests_to("/v1/chat/completions")
    assert sent.headers["host"] == f"{fake.host}:{fake.port}"
    assert "internal-only" not in repr(sent.headers)
    await assert_settled(gateway, rows=1)


async def test_an_encoded_letter_is_the_same_route_and_goes_upstream_as_its_own_path(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    key = await premium_key(gateway)
    reply = await exchange(gateway, request("/v1/chat/%63ompletions", key=key))
    assert reply.status == 200, reply
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    rows = await assert_settled(gateway, rows=1)
    assert rows[0]["endpoint"] == "/v1/chat/completions"


# --- the query -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "x=1%0d%0aHost:evil",
        "x=1%0d%0a%0d%0aPOST%20/v1/load_lora_adapter%20HTTP/1.1",
        "a=1?b=2",
        "a=1??/../admin",
        "x=%0aX-Injected:%201",
    ],
)
async def test_a_smuggling_query_goes_upstream_still_encoded_and_injects_nothing(
    gateway: Gateway, fake: FakeVLLM, query: str
) -> None:
    # The gateway forwards the query as received: it never decodes it into the request
    # line or the headers it sends to vLLM.
    key = await premium_key(gateway)
    reply = await exchange(gateway, request(f"/v1/chat/completions?{query}", key=key))
    assert reply.status == 200, reply
    [sent] = fake.behaviour.requests_to("/v1/chat/completions")
    assert sent.query == query
    assert sent.headers["host"] == f"{fake.host}:{fake.port}"
    assert not {"x-injected", "evil"} & set(sent.headers)
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    await assert_settled(gateway, rows=1)


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/chat/completions?x=1\rHost: evil",
        b"/v1/chat/completions?x=1\nHost: evil",
        b"/v1/chat/completions?x=1\tb",
        b"/v1/chat/completions?x=\x00",
        b"/v1/chat/completions?x=\x7f",
        b"/v1/chat/completions?q=\xc3\xa9",
        b"/v1/chat/completions\r\nX-Injected: 1\r\n",
    ],
)
async def test_raw_control_bytes_in_the_target_are_400(
    gateway: Gateway, fake: FakeVLLM, target: bytes
) -> None:
    key = await premium_key(gateway)
    reply = await exchange(gateway, request(target, key=key))
    assert reply.status == 400, reply
    assert reply.error()["code"] == "malformed_request"
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


# --- the headers the gateway forwards ---------------------------------------------------------


@pytest.mark.parametrize("name", [b"Content-Type", b"Accept", b"User-Agent"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"text/x\nX-Injected: 1", id="lf"),
        pytest.param(b"text/x\rX-Injected: 1", id="cr"),
        pytest.param(b"text/x\r\n X-Injected: 1", id="obs-fold"),
        pytest.param(b"text/x\x00X-Injected: 1", id="nul"),
    ],
)
async def test_cr_lf_or_nul_in_a_forwarded_header_is_400(
    gateway: Gateway, fake: FakeVLLM, name: bytes, value: bytes
) -> None:
    key = await premium_key(gateway)
    data = request(key=key, headers=[name + b": " + value])
    if name == b"Content-Type":
        data = data.replace(b"Content-Type: application/json\r\n", b"", 1)
    reply = await exchange(gateway, data)
    assert reply.status == 400, reply
    assert reply.error()["code"] == "malformed_request"
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


async def test_forwarded_headers_arrive_as_sent_and_a_second_line_stays_behind(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    # CRLF ends a header, so "a\r\nX-Injected: 1" is two headers: the second is not one
    # the gateway forwards. Percent-escapes are plain text to HTTP and arrive as such.
    key = await premium_key(gateway)
    headers = [
        b"Accept: application/json\r\nX-Injected: 1",
        b"User-Agent: agent%0d%0aX-Injected:%201",
    ]
    reply = await exchange(gateway, request(key=key, headers=headers))
    assert reply.status == 200, reply
    [sent] = fake.behaviour.requests_to("/v1/chat/completions")
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["user-agent"] == "agent%0d%0aX-Injected:%201"
    assert "x-injected" not in sent.headers
    assert not any("\r" in v or "\n" in v for v in sent.headers.values())
    await assert_settled(gateway, rows=1)


# --- routes outside the allow-list --------------------------------------------------------


VLLM_ROUTES_NOT_FORWARDED = [
    # Development and admin routes (VLLM_SERVER_DEV_MODE and friends).
    ("POST", "/v1/unload_lora_adapter"),
    ("GET", "/v1/load_lora_adapter"),
    ("POST", "/collective_rpc"),
    ("GET", "/reset_prefix_cache"),
    ("POST", "/reset_mm_cache"),
    ("POST", "/sleep"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("GET", "/server_info"),
    ("POST", "/start_profile"),
    ("POST", "/stop_profile"),
    ("POST", "/scale_elastic_ep"),
    ("POST", "/update_weights"),
    # Public API routes vLLM has that this gateway does not offer.
    ("POST", "/pooling"),
    ("POST", "/classify"),
    ("POST", "/invocations"),
    ("GET", "/version"),
    ("GET", "/ping"),
    ("GET", "/load"),
    ("GET", "/v1/metrics"),
]


async def test_vllm_routes_outside_the_allow_list_are_404_and_never_forwarded(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    key = await premium_key(gateway)
    for method, path in VLLM_ROUTES_NOT_FORWARDED:
        body = b"" if method == "GET" else b'{"model": "fake-model"}'
        reply = await exchange(gateway, request(path, key=key, method=method, body=body))
        assert_not_found(reply)
        assert path in reply.error()["message"]
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


async def test_metrics_is_the_gateways_own_not_vllms(gateway: Gateway, fake: FakeVLLM) -> None:
    key = await premium_key(gateway)
    reply = await exchange(gateway, request("/metrics", key=key, method="GET", body=b""))
    assert reply.status == 200
    assert b"llmgw_" in reply.body
    assert b"vllm:" not in reply.body
    refused = await exchange(gateway, request("/metrics", key=key, body=b"{}"))
    assert refused.status == 405
    refused.error()
    # (The gateway reads vLLM's /metrics itself, for routing: never for a client, whose
    # requests carry their X-Request-Id.)
    relayed = [r for r in fake.behaviour.requests if "x-request-id" in r.headers]
    assert [r.path for r in relayed if "metrics" in r.path] == []
    await assert_settled(gateway, rows=0)
