"""HTTP/1.1 spoken by hand on a loopback socket, for what no client library will send:
trickled headers, lying lengths, a request smuggled behind another, bytes a parser must
refuse. Every read is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from multidict import CIMultiDict

from llmgw.fake_vllm import FakeVLLM

from ..conftest import Gateway


class Listening(Protocol):
    """A gateway to connect to: in the test's process, or a `llmgw serve` of its own."""

    @property
    def url(self) -> str: ...


# What the gateway itself asks the upstream (health probe, model discovery, load).
PROBES = {("GET", "/health"), ("GET", "/v1/models"), ("GET", "/metrics")}
CHAT_BODY = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)


def forwarded(fake: FakeVLLM) -> list[tuple[str, str]]:
    """Requests that reached the fake vLLM other than the gateway's own probes."""
    return [(r.method, r.path) for r in fake.behaviour.requests if (r.method, r.path) not in PROBES]


def request(
    target: str | bytes = "/v1/chat/completions",
    *,
    key: str | None = None,
    body: bytes = CHAT_BODY,
    method: str = "POST",
    headers: Iterable[bytes] = (),
    length: bool = True,
) -> bytes:
    """One request's bytes: `headers` are raw lines (no CRLF); `length` adds the true
    Content-Length (leave it out to write your own)."""
    raw_target = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", b"Host: gateway"]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    lines.append(b"Content-Type: application/json")
    lines.extend(headers)
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# The error types Anthropic's API documents (its SDK picks exceptions by status).
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The `error` object of an OpenAI-shaped error reply (or, on the Messages API's
        routes, an Anthropic-shaped one), checked to be nothing else."""
        assert self.status >= 400, self
        assert self.headers.get("Content-Type", "").startswith("application/json"), self
        parsed = orjson.loads(self.body)
        if parsed.get("type") == "error":  # Anthropic's: {"type": "error", "error": {...}}
            assert list(parsed) == ["type", "error"], parsed
            anthropic: dict[str, Any] = parsed["error"]
            assert set(anthropic) == {"type", "message"}, anthropic
            assert isinstance(anthropic["message"], str)
            assert anthropic["message"]
            assert anthropic["type"] in ANTHROPIC_TYPES, anthropic
            return anthropic
        assert list(parsed) == ["error"], parsed
        error: dict[str, Any] = parsed["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str)
        assert error["message"]
        assert isinstance(error["type"], str)
        assert error["type"]
        assert error["param"] is None or isinstance(error["param"], str), error
        assert error["code"] is None or isinstance(error["code"], str), error
        return error


class Wire:
    """One client connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gateway: Listening) -> Wire:
        host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def __aenter__(self) -> Wire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, seconds: float = 10, *, to_head: bool = False) -> Reply:
        """The next response: status line, headers, and a body framed by Content-Length,
        chunked encoding, or the end of the connection (none `to_head` a HEAD request)."""
        async with asyncio.timeout(seconds):
            status, headers = await self._head()
            while 100 <= status < 200:  # "100 Continue" and the like come before the answer
                status, headers = await self._head()
            if to_head:
                body = b""
            elif "Content-Length" in headers:
                body = await self.reader.readexactly(int(headers["Content-Length"]))
            elif headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = await self._chunks()
            else:
                body = await self.reader.read()
        return Reply(status, headers, body)

    async def _head(self) -> tuple[int, CIMultiDict[str]]:
        status_line = await self.reader.readline()
        # aiohttp answers in the request's version, even a made-up one ("HTTP/2.0").
        assert status_line.startswith(b"HTTP/"), status_line
        headers: CIMultiDict[str] = CIMultiDict()
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.add(name.strip(), value.strip())
        return int(status_line.split()[1]), headers

    async def _chunks(self) -> bytes:
        body = b""
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            body += await self.reader.readexactly(size)
            await self.reader.readline()
        await self.reader.readline()  # the CRLF after the last, empty chunk
        return body

    async def closed_by_gateway(self, seconds: float = 10) -> bytes:
        """Wait (bounded) until the gateway closes the connection; what it sent first."""
        async with asyncio.timeout(seconds):
            return await self.reader.read()


async def premium_key(gateway: Gateway) -> str:
    key: str = (await gateway.create_key("alice", tier="premium"))["key"]
    return key


async def exchange(gateway: Gateway, data: bytes) -> Reply:
    async with await Wire.open(gateway) as wire:
        await wire.send(data)
        return await wire.reply()
