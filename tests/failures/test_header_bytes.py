"""Issue 12, item 4: bytes that are not UTF-8 where a key or a token is expected.

aiohttp hands header values on decoded with `surrogateescape`, so such bytes arrive as
lone surrogates, which `str.encode()` refuses. They are a wrong key like any other: 401
in OpenAI's shape, and no traceback in the log (before, each such request, which needs
no key at all, wrote one: 200 of them added 240 KB).
"""

from __future__ import annotations

import logging

import pytest

from llmgw.fake_vllm import FakeVLLM

from ..conftest import GatewayFactory, with_secret
from ..test_remote_admin import SECRET, add_admin
from .conftest import assert_settled
from .wire import Reply, Wire, forwarded, request

BAD_BYTES = [
    b"Authorization: Bearer sk-internal-\xff\xfe",
    b"Authorization: Bearer \xc3\x28",
    b"x-api-key: \xc3\x28",
    b"x-api-key: sk-internal-\xed\xa0\x80",  # an encoded surrogate: not UTF-8 either
]


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing worse than an access line; no traceback."""
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("header", BAD_BYTES)
async def test_a_key_header_that_is_not_utf8_is_a_wrong_key(
    gateway_factory: GatewayFactory,
    fake: FakeVLLM,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await gateway_factory()
    async with await Wire.open(gateway) as wire:
        for target, method in [("/v1/chat/completions", "POST"), ("/v1/models", "GET")] * 3:
            await wire.send(request(target, method=method, headers=[header]))
            reply = await wire.reply()
            assert reply.status == 401, reply
            error = reply.error()
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
    assert forwarded(fake) == []
    assert_quiet(caplog)
    access = [r for r in caplog.records if r.name == "llmgw.access"]
    assert [r.fields["status"] for r in access] == [401] * 6  # type: ignore[attr-defined]
    await assert_settled(gateway, rows=0)  # no key was recognised: nothing to record


@pytest.mark.parametrize(
    "header",
    [b"Authorization: Bearer \xff\xfe.\xff.\xff", b"Authorization: Bearer eyJ\xc3\x28.e30.x"],
)
async def test_an_admin_token_that_is_not_utf8_is_an_invalid_token(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await gateway_factory(admin=with_secret(SECRET))
    await add_admin(gateway)
    async with await Wire.open(gateway) as wire:
        for _ in range(3):
            await wire.send(request("/admin/api/keys", method="GET", body=b"", headers=[header]))
            reply = await wire.reply()
            assert reply.status == 401, reply
            assert reply.error()["code"] == "invalid_token"
    assert_quiet(caplog)
    await assert_settled(gateway, rows=0)


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "root-admin", "password": "\xff\xfe not utf-8"}',
        b'{"username": "root-\xc3\x28", "password": "whatever it is"}',
        b'{"username": "root-admin", "password": "\\udcff lone surrogate"}',
        b'{"username": "\\ud800", "password": "whatever it is"}',
    ],
)
async def test_a_login_body_that_is_not_utf8_is_a_bad_request(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """The login body is JSON, which must be UTF-8 and may not escape a lone
    surrogate: 400, never a password check that fails on the text."""
    caplog.set_level(logging.DEBUG)
    gateway = await gateway_factory(admin=with_secret(SECRET))
    await add_admin(gateway)
    async with await Wire.open(gateway) as wire:
        await wire.send(request("/admin/api/login", body=body))
        reply: Reply = await wire.reply()
    assert reply.status == 400, reply
    assert "not valid JSON" in reply.error()["message"]
    assert_quiet(caplog)
    await assert_settled(gateway, rows=0)
