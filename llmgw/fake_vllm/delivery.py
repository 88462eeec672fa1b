"""Sending a generation: pacing tokens and injecting the failures ``FakeVLLMBehaviour``
asks for, the same way for every API the fake speaks (chat, completions, Responses,
Anthropic Messages). What is sent comes from the API's own module; how and when it is
sent, and how it breaks, lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from .behaviour import FakeVLLMBehaviour
from .errors import ApiError, error_body


class LiveStreams(set[asyncio.Transport]):
    """Transports of responses still streaming, so stop() can cut them."""


LIVE_KEY = web.AppKey("fake_vllm_live_streams", LiveStreams)
REQUEST_ID = web.RequestKey("fake_vllm_request_id", str)
RESET = web.RequestKey("fake_vllm_reset", bool)  # the fake cut the connection itself
CLIENT_GONE = web.RequestKey("fake_vllm_client_gone", bool)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}

# Waits until generated token i (from 0) exists (at once for i < 0): the behaviour's
# first_token_delay and token_delay, or a simulated engine's steps.
Pace = Callable[[int], Awaitable[None]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Starlette's JSONResponse is compact json, like orjson.
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=orjson.dumps(body), headers=headers)


async def injected_failure(
    beh: FakeVLLMBehaviour, shape: Callable[[str, str, int], Any] | None = None
) -> None:
    """The headers delay, then the injected HTTP error if one is asked for.

    ``shape(message, type, status)`` renders the error body (default: vLLM's OpenAI shape).
    """
    await asyncio.sleep(beh.headers_delay)
    if beh.fail != "http_error":
        return
    if beh.http_error_times is not None:
        beh.http_error_times -= 1
        if beh.http_error_times <= 0:
            beh.fail, beh.http_error_times = None, None
    status = beh.http_error_status
    phrase = HTTPStatus(status).phrase
    err_type = phrase.replace(" ", "") + ("" if phrase.endswith("Error") else "Error")
    retry = {"Retry-After": beh.http_error_retry_after} if beh.http_error_retry_after else {}
    if beh.http_error_body is not None:
        raise ApiError(status, beh.http_error_body, {"Content-Type": "text/html"} | retry)
    raise ApiError(status, (shape or error_body)(phrase, err_type, status), retry)


def reset_connection(request: web.Request, beh: FakeVLLMBehaviour) -> None:
    request[RESET] = True
    beh.resets += 1
    if request.transport is not None:
        request.transport.abort()


@contextlib.asynccontextmanager
async def generating(beh: FakeVLLMBehaviour) -> AsyncIterator[None]:
    """Count a generation request while it is served, after any ``hold`` lets it go."""
    beh.generating += 1
    beh.most_generating = max(beh.most_generating, beh.generating)
    try:
        if beh.hold is not None:
            beh.held += 1
            try:
                await beh.hold.wait()
            finally:
                beh.held -= 1
        yield
    finally:
        beh.generating -= 1


@dataclass(frozen=True)
class Script:
    """A stream's events and where its tokens are, so pacing and failures can find them.

    ``events[first_token + i]`` carries generated token ``i`` (with whatever the API sends
    alongside it); ``events`` after the tokens close the stream. ``error`` is what
    ``fail = "error"`` sends after the tokens already sent, ``None`` to cut the
    connection (what uvicorn does when vLLM's generator raises); ``done`` ends a stream
    that ran to its end (chat's ``[DONE]``; nothing for an API without one).
    """

    events: list[bytes]
    first_token: int
    n_tokens: int
    error: bytes | None
    done: bytes = b""
    error_ends: bool = False  # the error event ends the stream (no `done` after it)


def _delays(beh: FakeVLLMBehaviour) -> Pace:
    """The behaviour's pace: ``first_token_delay``, then ``token_delay`` per token."""

    async def pace(i: int) -> None:
        await asyncio.sleep(beh.first_token_delay if i == 0 else beh.token_delay)

    return pace


async def stream(
    request: web.Request, script: Script, beh: FakeVLLMBehaviour, pace: Pace | None = None
) -> web.StreamResponse:
    token_end = script.first_token + script.n_tokens
    fail_at = min(script.first_token + beh.fail_after_tokens, token_end) if beh.fail else None
    resp = web.StreamResponse(headers=SSE_HEADERS)
    transport, live = request.transport, request.app[LIVE_KEY]
    beh.open_streams += 1
    try:
        if transport is not None:
            live.add(transport)
        await resp.prepare(request)
        pace = pace or _delays(beh)
        await pace(0)  # what comes before the first token comes with it
        for i, event in enumerate(script.events):
            if i == fail_at:
                break
            if script.first_token < i < token_end:
                await pace(i - script.first_token)
            await resp.write(event)
        cut = beh.fail == "reset" or (beh.fail == "error" and script.error is None)
        if fail_at is not None and cut:
            reset_connection(request, beh)
            return resp
        if fail_at is not None and beh.fail == "stall":
            await asyncio.Future()  # until the client leaves or the server stops
        if fail_at is not None and beh.fail == "error" and script.error is not None:
            await resp.write(script.error)
            if script.error_ends:
                await resp.write_eof()
                return resp
        if script.done:
            await resp.write(script.done)
        await resp.write_eof()
    except ConnectionResetError:
        request[CLIENT_GONE] = True
    finally:
        beh.open_streams -= 1
        live.discard(transport)
    return resp


async def respond(
    request: web.Request,
    n_tokens: int,
    body: Callable[[], Any],
    beh: FakeVLLMBehaviour,
    error: ApiError | None = None,
    pace: Pace | None = None,
) -> web.Response:
    """A whole body after the time its tokens take; ``error`` is what ``fail = "error"``
    answers (default: vLLM's GenerationError, a 500 before anything was sent)."""
    n = n_tokens
    if beh.fail in ("reset", "stall", "error"):
        n = min(n, beh.fail_after_tokens)
    if pace is None:
        await asyncio.sleep(beh.first_token_delay + max(n - 1, 0) * beh.token_delay)
    else:
        await pace(n - 1)  # n = 0: at once
    if beh.fail == "reset":
        reset_connection(request, beh)
    if beh.fail in ("reset", "stall"):
        await asyncio.Future()  # a reset cancels us right away via handler_cancellation
    if beh.fail == "error":
        raise error or ApiError(
            500, error_body("Internal server error", "InternalServerError", 500)
        )
    return json_response(body())
