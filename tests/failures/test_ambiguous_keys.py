"""Issue 12, item 8 (part): a request that names two different keys.

Two `Authorization` headers, `Authorization` and an `x-api-key` with another key, or
two different `x-api-key` headers: which key is meant (and charged) is anyone's guess,
so the request is refused with 400 `ambiguous_api_key` before any key is looked up. It
reaches no upstream and costs no key anything. The same key twice is no ambiguity.
The remote admin door refuses two `Authorization` headers likewise.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway, GatewayFactory, with_secret
from ..test_remote_admin import SECRET, add_admin, login
from .conftest import assert_settled
from .wire import Reply, Wire, exchange, forwarded, request


def bearer(key: str) -> bytes:
    return b"Authorization: Bearer " + key.encode()


def x_api_key(key: str) -> bytes:
    return b"x-api-key: " + key.encode()


TwoKeys = Callable[[str, str], list[bytes]]
OneKey = Callable[[str], list[bytes]]

AMBIGUOUS: dict[str, TwoKeys] = {
    "two Authorization headers": lambda a, b: [bearer(a), bearer(b)],
    "Authorization and another x-api-key": lambda a, b: [bearer(a), x_api_key(b)],
    "x-api-key and another Authorization": lambda a, b: [x_api_key(b), bearer(a)],
    "two x-api-key headers": lambda a, b: [x_api_key(a), x_api_key(b)],
    "a key and an unknown one": lambda a, b: [bearer(a), x_api_key("sk-internal-unknown")],
}


def assert_ambiguous(reply: Reply) -> None:
    assert reply.status == 400, reply
    error = reply.error()
    assert error["code"] == "ambiguous_api_key"
    assert error["type"] == "invalid_request_error"
    assert "one" in error["message"]
    assert "X-RateLimit-Limit-Minute" not in reply.headers  # no key was charged


async def remaining(gateway: Gateway, key: str) -> int:
    """The key's requests left this minute, as a plain request with it is told."""
    reply = await exchange(gateway, request("/v1/models", method="GET", body=b"", key=key))
    assert reply.status == 200, reply
    return int(reply.headers["X-RateLimit-Remaining-Minute"])


@pytest.mark.parametrize("headers", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_two_different_keys_are_400_and_cost_nothing(
    gateway: Gateway, fake: FakeVLLM, headers: TwoKeys
) -> None:
    alice = (await gateway.create_key("alice", tier="premium"))["key"]
    bob = (await gateway.create_key("bob", tier="premium"))["key"]
    lines = headers(alice, bob)
    async with await Wire.open(gateway) as wire:
        for target, method in [("/v1/chat/completions", "POST"), ("/v1/models", "GET")]:
            await wire.send(request(target, method=method, headers=lines))
            assert_ambiguous(await wire.reply())
    assert forwarded(fake) == []
    await assert_settled(gateway, rows=0)
    # Neither key was charged for the refused requests: each has its whole minute left
    # but for the request that asks.
    assert await remaining(gateway, alice) == 99
    assert await remaining(gateway, bob) == 99


SAME: dict[str, OneKey] = {
    "Authorization twice": lambda a: [bearer(a), bearer(a)],
    "Authorization and x-api-key": lambda a: [
        b"Authorization: bearer  " + a.encode(),
        x_api_key(a),
    ],
    "x-api-key twice": lambda a: [x_api_key(a), x_api_key(a)],
    "and an empty x-api-key": lambda a: [bearer(a), b"x-api-key: "],  # names no key
}


@pytest.mark.parametrize("headers", SAME.values(), ids=SAME.keys())
async def test_the_same_key_twice_is_no_ambiguity(
    gateway: Gateway, fake: FakeVLLM, headers: OneKey
) -> None:
    alice = (await gateway.create_key("alice", tier="premium"))["key"]
    reply = await exchange(gateway, request(headers=headers(alice)))
    assert reply.status == 200, reply
    assert reply.headers["X-RateLimit-Remaining-Minute"] == "99"
    assert forwarded(fake) == [("POST", "/v1/chat/completions")]
    [row] = await assert_settled(gateway, rows=1)
    assert row["user_id"] == "alice"


async def test_two_admin_tokens_are_refused(gateway_factory: GatewayFactory) -> None:
    """The remote admin door: a valid token and another are no valid request (400, as
    on /v1: logging in again would not help), and the same token twice is fine."""
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET))
    await add_admin(gateway)
    async with aiohttp.ClientSession() as http:
        token = (await login(http, gateway))[1]["access_token"]

    async def list_keys(*tokens: str) -> Reply:
        lines = [bearer(t) for t in tokens]
        return await exchange(gateway, request("/admin/api/keys", method="GET", headers=lines))

    for second in ("not-a-token", token + "x"):
        reply = await list_keys(token, second)
        assert reply.status == 400, reply
        assert reply.error()["code"] == "ambiguous_token"
    assert (await list_keys(token, token)).status == 200
    await assert_settled(gateway, rows=0)
