"""HTTP that is wrong on the wire: headers over the limits, `Content-Length` together
with `Transfer-Encoding`, a negative, malformed or lying `Content-Length`, a request
smuggled behind another, a body that breaks off mid-way. Each gets 400, 413 or (a body
that never completes) 408, in OpenAI's shape, and nothing of it reaches vLLM.

`tests/test_bad_input.py` already covers an oversized Authorization header (and that
the key is neither echoed nor logged), a body over `max_body_bytes` with an honest or
no Content-Length, a gzip bomb, and garbage instead of a request line.
"""

from __future__ import annotations

import gzip
import logging
import zlib

import pytest

from llmgw.config import ServerSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.state import METRICS

from ..conftest import Gateway, GatewayFactory, wait_for
from .conftest import assert_settled
from .wire import CHAT_BODY, Reply, Wire, exchange, forwarded, premium_key, request

CHUNKED_CHAT = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT_BODY), CHAT_BODY)


def assert_malformed(reply: Reply, key: str) -> None:
    """The parser's refusal: 400, OpenAI's shape, a fixed message, no echo."""
    assert reply.status == 400, reply
    assert reply.error()["code"] == "malformed_request"
    assert key.encode() not in reply.body
    # Never reached a handler, so no key was recognised: no rate-limit headers.
    assert "X-RateLimit-Limit-Minute" not in reply.headers


async def assert_still_serving(gateway: Gateway, key: str) -> None:
    assert (await exchange(gateway, request(key=key))).status == 200


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# --- headers over the limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        pytest.param("/v1/chat/completions?q=" + "x" * 9000, [], id="request-line"),
        pytest.param("/v1/chat/completions", [b"X-" + b"n" * 9000 + b": v"], id="header-name"),
        pytest.param("/v1/chat/completions", [b"X-Pad: " + b"v" * 9000], id="header-value"),
        pytest.param(
            "/v1/chat/completions", [b"X-H%d: v" % i for i in range(200)], id="too-many-headers"
        ),
    ],
)
async def test_headers_over_the_limits_are_400_and_go_nowhere(
    gateway: Gateway, fake: FakeVLLM, target: str, headers: list[bytes]
) -> None:
    key = await premium_key(gateway)
    assert_malformed(await exchange(gateway, request(target, key=key, headers=headers)), key)
    assert forwarded(fake) == []
    await assert_still_serving(gateway, key)
    await assert_settled(gateway, rows=1)


# --- framing: Content-Length and Transfer-Encoding ----------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(
            [b"Content-Length: %d" % len(CHUNKED_CHAT), b"Transfer-Encoding: chunked"],
            id="cl-then-te",
        ),
        pytest.param([b"Transfer-Encoding: chunked", b"Content-Length: 5"], id="te-then-cl"),
        pytest.param([b"Transfer-Encoding: xchunked", b"Content-Length: 5"], id="te-obfuscated"),
        pytest.param([b"Transfer-Encoding : chunked"], id="te-space-before-colon"),
        pytest.param(
            [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"], id="te-twice"
        ),
        pytest.param([b"Transfer-Encoding: identity"], id="te-identity"),
    ],
)
async def test_content_length_with_transfer_encoding_is_400_and_goes_nowhere(
    gateway: Gateway, fake: FakeVLLM, framing: list[bytes]
) -> None:
    # Two framings of one body are how requests get smuggled past a proxy: refuse both.
    key = await premium_key(gateway)
    data = request(key=key, body=CHUNKED_CHAT, headers=framing, length=False)
    assert_malformed(await exchange(gateway, data), key)
    assert forwarded(fake) == []
    await assert_still_serving(gateway, key)
    await assert_settled(gateway, rows=1)


@pytest.mark.parametrize(
    "value",
    [b"-1", b"+5", b"0x10", b"1e3", b"5 5", b"5, 5", b"", b"\xd9\xa1", b"9" * 30],
)
async def test_negative_or_malformed_content_length_is_400(
    gateway: Gateway, fake: FakeVLLM, value: bytes
) -> None:
    key = await premium_key(gateway)
    data = request(key=key, headers=[b"Content-Length: " + value], length=False)
    assert_malformed(await exchange(gateway, data), key)
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


async def test_two_different_content_lengths_are_400(gateway: Gateway, fake: FakeVLLM) -> None:
    key = await premium_key(gateway)
    lengths = [b"Content-Length: %d" % len(CHAT_BODY), b"Content-Length: 5"]
    assert_malformed(await exchange(gateway, request(key=key, headers=lengths, length=False)), key)
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


# --- lying Content-Length -------------------------------------------------------------------


async def test_content_length_longer_than_the_body_is_408_after_body_timeout(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(
        server=ServerSettings(host="127.0.0.1", port=0, body_timeout=0.5)
    )
    key = await premium_key(gateway)
    lie = [b"Content-Length: %d" % (len(CHAT_BODY) + 100)]
    reply = await exchange(gateway, request(key=key, headers=lie, length=False))
    assert reply.status == 408
    assert reply.error()["code"] == "request_timeout"
    assert forwarded(fake) == []
    rows = await assert_settled(gateway, rows=1)
    assert rows[0]["status_code"] == 408


async def test_content_length_beyond_the_limit_is_413_without_waiting_for_the_body(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    # body_timeout is a minute: the answer comes from the header alone, long before.
    key = await premium_key(gateway)
    lie = [b"Content-Length: %d" % 10**12]
    reply = await exchange(gateway, request(key=key, headers=lie, length=False))
    assert reply.status == 413
    assert reply.error()["code"] == "request_too_large"
    assert forwarded(fake) == []
    rows = await assert_settled(gateway, rows=1)
    assert rows[0]["status_code"] == 413


async def test_content_length_shorter_than_the_body_sends_only_that_many_bytes_upstream(
    gateway: Gateway, fake: FakeVLLM
) -> None:
    # What follows the declared length is the next request on the connection, judged on
    # its own: here one for a route that is never forwarded, carrying a valid key.
    key = await premium_key(gateway)
    smuggled = request("/v1/load_lora_adapter", key=key, body=b'{"lora_name": "x"}')
    async with await Wire.open(gateway) as wire:
        await wire.send(request(key=key, body=CHAT_BODY) + smuggled)
        first, second = await wire.reply(), await wire.reply()
    assert first.status == 200
    assert second.status == 404
    second.error()
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    assert fake.behaviour.requests_to("/v1/chat/completions")[0].body == CHAT_BODY
    rows = await assert_settled(gateway, rows=1)
    assert rows[0]["status_code"] == 200


# --- a body that breaks off mid-way ---------------------------------------------------------


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param((b"gzip", b"this is not gzip at all"), id="gzip-garbage"),
        pytest.param((b"deflate", b"\x00\x01\x02 nor deflate"), id="deflate-garbage"),
        pytest.param((b"gzip", gzip.compress(CHAT_BODY)[:12] + b"\xff" * 20), id="gzip-corrupt"),
        pytest.param((b"deflate", zlib.compress(CHAT_BODY)[:5] + b"\xff" * 9), id="zlib-corrupt"),
    ],
)
async def test_an_undecodable_compressed_body_is_400_not_500(
    gateway: Gateway,
    fake: FakeVLLM,
    caplog: pytest.LogCaptureFixture,
    encoding: tuple[bytes, bytes],
) -> None:
    name, body = encoding
    key = await premium_key(gateway)
    data = request(key=key, body=body, headers=[b"Content-Encoding: " + name])
    reply = await exchange(gateway, data)
    assert reply.status == 400, reply
    reply.error()  # "malformed_request", or invalid JSON when some of it did decode
    assert forwarded(fake) == []
    no_errors_logged(caplog)
    await assert_still_serving(gateway, key)
    # Where the decoder notices decides who refuses: mid-body, the handler (an
    # authenticated answer with its ledger row); at the body's end, aiohttp's parser,
    # before any request exists (no key recognised, no row). Never a 500.
    refused = [400] if "X-RateLimit-Limit-Minute" in reply.headers else []
    rows = await assert_settled(gateway, rows=len(refused) + 1)
    assert [r["status_code"] for r in rows] == [*refused, 200]


@pytest.mark.parametrize(
    "broken", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdefgh\r\n0\r\n\r\n"], ids=["size", "overrun"]
)
async def test_chunked_framing_that_breaks_mid_body_is_400_at_once(
    gateway: Gateway, fake: FakeVLLM, caplog: pytest.LogCaptureFixture, broken: bytes
) -> None:
    # body_timeout is a minute: the 400 must come from the broken framing, not from it.
    key = await premium_key(gateway)
    head = request(key=key, body=b"", headers=[b"Transfer-Encoding: chunked"], length=False)
    async with await Wire.open(gateway) as wire:
        await wire.send(head + b"5\r\n" + CHAT_BODY[:5] + b"\r\n")
        await wait_for(lambda: gateway.app[METRICS].in_flight > 0)  # reading the body now
        await wire.send(broken)
        reply = await wire.reply()
    assert reply.status == 400, reply
    assert reply.error()["code"] == "malformed_request"
    assert forwarded(fake) == []
    no_errors_logged(caplog)
    rows = await assert_settled(gateway, rows=1)
    assert rows[0]["status_code"] == 400


# --- Expect -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"something-else", b"\xe9t\xe9", b"100-continue, x"])
async def test_an_expect_the_gateway_cannot_meet_is_417_in_openai_shape(
    gateway: Gateway, fake: FakeVLLM, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    # aiohttp's own answer quoted the header in plain text, and was a 500 with a
    # traceback when the header was not UTF-8.
    key = await premium_key(gateway)
    reply = await exchange(gateway, request(key=key, headers=[b"Expect: " + value]))
    assert reply.status == 417, reply
    assert reply.error()["code"] == "expectation_failed"
    assert value not in reply.body
    assert forwarded(fake) == []
    no_errors_logged(caplog)
    await assert_settled(gateway, rows=0)


async def test_expect_100_continue_is_met(gateway: Gateway, fake: FakeVLLM) -> None:
    key = await premium_key(gateway)
    async with await Wire.open(gateway) as wire:
        head, body = request(key=key, headers=[b"Expect: 100-continue"]).split(b"\r\n\r\n")
        await wire.send(head + b"\r\n\r\n")
        assert await wire.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await wire.send(body)
        assert (await wire.reply()).status == 200
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    await assert_settled(gateway, rows=1)
