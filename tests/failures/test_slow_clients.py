"""Slow clients: headers trickled byte by byte (slowloris), a body that never finishes, a
connection that says nothing, an idle kept-alive one. Each is cut off after its
configured timeout (`[server] header_timeout`, `body_timeout`, `keepalive_timeout`, set
small here) while other clients are served as usual; none of these timeouts ever cuts a
request that is merely long (a slow body within its deadline, a long stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from llmgw.config import ConfigError, ServerSettings, load_settings
from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway, GatewayFactory, auth, post
from .conftest import assert_settled
from .wire import CHAT_BODY, Wire, forwarded, request

# The trickle's pace; a bounded number of steps, so a missing timeout fails the test.
STEP = 0.05
MAX_STEPS = 200


DEFAULT = ServerSettings()


def server(
    *,
    header_timeout: float = DEFAULT.header_timeout,
    body_timeout: float = DEFAULT.body_timeout,
    keepalive_timeout: float = DEFAULT.keepalive_timeout,
) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keepalive_timeout=keepalive_timeout,
    )


async def served_normally(gateway: Gateway, key: str) -> None:
    """Another client, on its own connection, gets its answer as usual."""
    status, _, raw = await post(f"{gateway.base_url}/chat/completions", CHAT_BODY, auth(key))
    assert status == 200, raw
    assert orjson.loads(raw)["choices"]


@contextlib.asynccontextmanager
async def trickling(wire: Wire, data: bytes) -> AsyncIterator[None]:
    """Send `data` a byte at a time in the background, for as long as the block runs
    (or until the gateway hangs up, or the bytes run out)."""

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(min(len(data), MAX_STEPS)):
                await wire.send(data[i : i + 1])
                await asyncio.sleep(STEP)

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_timeout_error(reply_error: dict[str, object]) -> None:
    assert reply_error["code"] == "request_timeout"
    assert reply_error["type"] == "timeout"


# --- headers -------------------------------------------------------------------------


async def test_trickled_headers_get_408_and_are_cut_off_while_others_are_served(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(server=server(header_timeout=0.5))
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    # A valid key in the first header line: it must not earn the half-sent request a
    # ledger row, nor a trip upstream.
    head = request(key=key).split(b"\r\n\r\n")[0] + b"\r\nX-Slow: " + b"z" * MAX_STEPS
    async with await Wire.open(gateway) as slow, trickling(slow, head):
        await served_normally(gateway, key)
        reply = await slow.reply()
        assert reply.status == 408
        assert_timeout_error(reply.error())
        assert reply.headers["Connection"] == "close"
        assert await slow.closed_by_gateway() == b""
    await served_normally(gateway, key)
    assert forwarded(fake) == [("POST", "/v1/chat/completions")] * 2
    rows = await assert_settled(gateway, rows=2)
    assert [r["status_code"] for r in rows] == [200, 200]


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    gateway_factory: GatewayFactory,
) -> None:
    # No request was begun, so none is answered: a 408 could be taken for the answer to
    # a request the client sends at that very moment.
    gateway = await gateway_factory(server=server(header_timeout=0.5))
    async with await Wire.open(gateway) as silent:
        assert await silent.closed_by_gateway() == b""
    await assert_settled(gateway, rows=0)


async def test_a_later_request_on_a_kept_alive_connection_has_its_own_header_deadline(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    timeout = 0.5
    gateway = await gateway_factory(server=server(header_timeout=timeout))
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    async with await Wire.open(gateway) as wire:
        await wire.send(request(key=key))
        assert (await wire.reply()).status == 200
        # Idle between requests is the keep-alive timeout's business, not this one's:
        # the clock starts with the next request's first byte.
        await asyncio.sleep(2 * timeout)
        await wire.send(request(key=key))
        assert (await wire.reply()).status == 200
        async with trickling(wire, request(key=key)):
            reply = await wire.reply()
            assert reply.status == 408
            assert_timeout_error(reply.error())
            assert await wire.closed_by_gateway() == b""
    assert forwarded(fake) == [("POST", "/v1/chat/completions")] * 2
    await assert_settled(gateway, rows=2)


async def test_the_header_deadline_never_cuts_a_slow_body_or_a_long_stream(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    timeout = 0.5
    gateway = await gateway_factory(server=server(header_timeout=timeout, body_timeout=30))
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    fake.behaviour.token_delay = timeout / 4  # 8 tokens: a stream two header deadlines long
    stream = orjson.dumps({**orjson.loads(CHAT_BODY), "max_tokens": 8, "stream": True})
    async with await Wire.open(gateway) as wire:
        head, body = request(key=key).split(b"\r\n\r\n")
        await wire.send(head + b"\r\n\r\n")
        for i in range(0, len(body), len(body) // 8):  # over two header deadlines
            await asyncio.sleep(timeout / 4)
            await wire.send(body[i : i + len(body) // 8])
        assert (await wire.reply()).status == 200

        await wire.send(request(key=key, body=stream))
        reply = await wire.reply()
        assert reply.status == 200
        assert reply.body.endswith(b"data: [DONE]\n\n")
        assert reply.body.count(b'"content"') >= 8

        await wire.send(request(key=key))  # the connection is still good
        assert (await wire.reply()).status == 200
    rows = await assert_settled(gateway, rows=3)
    assert [r["status_code"] for r in rows] == [200, 200, 200]


# --- the body ------------------------------------------------------------------------


async def test_a_body_that_never_finishes_gets_408_and_a_ledger_row(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(server=server(body_timeout=0.5))
    created = await gateway.create_key("alice", tier="premium")
    head, body = request(key=created["key"]).split(b"\r\n\r\n")
    async with await Wire.open(gateway) as slow:
        await slow.send(head + b"\r\n\r\n")
        # Never more than half the body, however long the test waits.
        async with trickling(slow, body[: len(body) // 2]):
            await served_normally(gateway, created["key"])
            reply = await slow.reply()
    assert reply.status == 408
    assert_timeout_error(reply.error())
    assert "0.5 s" in reply.error()["message"]
    assert reply.headers["X-RateLimit-Limit-Minute"] == "100"  # an authenticated answer
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    rows = await assert_settled(gateway, rows=2)
    assert sorted(r["status_code"] for r in rows) == [200, 408]
    refused = next(r for r in rows if r["status_code"] == 408)
    assert refused["api_key_id"] == created["id"]
    assert refused["upstream"] is None
    assert (refused["prompt_tokens"], refused["completion_tokens"]) == (0, 0)


async def test_an_unauthenticated_trickled_body_gets_401_at_once(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    # The key is checked before the body is read: no waiting for body_timeout.
    gateway = await gateway_factory(server=server(body_timeout=60))
    head, body = request(key="sk-internal-not-a-key").split(b"\r\n\r\n")
    async with await Wire.open(gateway) as slow:
        await slow.send(head + b"\r\n\r\n")
        async with trickling(slow, body):
            reply = await slow.reply(seconds=10)
    assert reply.status == 401
    assert reply.error()["code"] == "invalid_api_key"
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)


# --- idle connections ------------------------------------------------------------------


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(server=server(keepalive_timeout=0.5, header_timeout=60))
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    async with await Wire.open(gateway) as wire:
        await wire.send(request(key=key))
        reply = await wire.reply()
        assert reply.status == 200
        assert reply.headers.get("Connection", "keep-alive").lower() != "close"
        # Closed without a word: between requests there is nothing to answer.
        assert await wire.closed_by_gateway() == b""
    await assert_settled(gateway, rows=1)


# --- the settings --------------------------------------------------------------------


def test_the_connection_timeouts_default_to_10_60_and_75_seconds() -> None:
    defaults = load_settings(None, {}).server
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keepalive_timeout) == (
        10.0,
        60.0,
        75.0,
    )


@pytest.mark.parametrize("name", ["header_timeout", "body_timeout", "keepalive_timeout"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_connection_timeout_must_be_positive(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {f"LLMGW_SERVER_{name.upper()}": value})
