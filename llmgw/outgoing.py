"""What a request sends upstream: its body, read within a deadline and checked before any
limit is charged (a 400, 403 or 404 costs nothing).

The body goes upstream as the bytes received, with one exception: a streaming chat or
text completion is made to ask for the usage chunk, which the relay removes again on the
way back if the client did not ask for it itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .context import RequestContext
from .errors import GatewayError
from .keys import KEY_PREFIX, ApiKey
from .routes import Route
from .state import SETTINGS, UPSTREAMS

_USAGE_OPTIONS = b',"stream_options":{"include_usage":true}}'
# What JSON calls each type, for OpenAI's "expected a boolean, but got a string" message.
_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", list: "an array"}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request as it goes upstream."""

    body: bytes
    stream: bool  # the client asked for a stream
    strip_usage: bool  # the gateway, not the client, asked for the usage chunk


async def read_outgoing(
    request: web.Request, ctx: RequestContext, route: Route, key: ApiKey
) -> Outgoing:
    """The request's body, checked: JSON, a model the key may use and some upstream
    serves, a boolean `stream`. Fills in `ctx.payload` and `ctx.model`."""
    body = await _read_body(request)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    ctx.payload = payload
    ctx.model = _model(payload)
    _check_allowed(ctx.model, key)
    pool = request.app[UPSTREAMS]
    if ctx.model is not None and pool.unknown_model(ctx.model):
        # vLLM's own answer, without asking it (nor charging): no upstream has it. The
        # names it offers instead are those the key may use.
        valid = [m for m in pool.served_models() if key.may_use(m)]
        raise GatewayError(
            404,
            f"The model `{ctx.model}` does not exist. Valid aliases: {', '.join(valid)}.",
            code="model_not_found",
            param="model",
        )
    if not route.streams or not _wants_stream(payload.get("stream")):
        return Outgoing(body, stream=False, strip_usage=False)
    body, strip_usage = _ask_for_usage(body, payload)
    return Outgoing(body, stream=True, strip_usage=strip_usage)


async def read_within(
    stream: aiohttp.StreamReader, read: Callable[[], Awaitable[bytes]], seconds: float
) -> bytes:
    """`read()`, within `seconds`. A small body usually arrives with its headers: when
    all of it is in, there is nothing to wait for, and a deadline would only cost timers
    on every request."""
    if stream.is_eof():
        return await read()
    async with asyncio.timeout(seconds):
        return await read()


async def _read_body(request: web.Request) -> bytes:
    server = request.app[SETTINGS].server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        # A whole-body deadline: a client trickling its body must not hold a connection
        # (and a handler) for as long as it likes.
        return await read_within(request.content, request.read, server.body_timeout)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {server.body_timeout:g} s.",
            code="request_timeout",
        ) from None
    except web.RequestPayloadError:
        # Found only once the handler reads: a body its Content-Encoding cannot decode,
        # or chunked framing that breaks off mid-body. The client's fault, not ours.
        raise GatewayError(
            400,
            "The request body could not be read: its content or transfer encoding is malformed.",
            code="malformed_request",
        ) from None


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes).",
        code="request_too_large",
    )


def _model(payload: dict[str, Any]) -> str | None:
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayError(400, "'model' must be a string.", param="model")
    if model is not None and KEY_PREFIX in model:
        # The model goes into the ledger and the access log: a key pasted there would be
        # written down in plain text.
        raise GatewayError(
            400,
            "'model' contains an API key: send the key in an Authorization header and "
            "the model's name in 'model'.",
            code="api_key_in_body",
            param="model",
        )
    return model


def _check_allowed(model: str | None, key: ApiKey) -> None:
    if key.allowed_models is not None and model not in key.allowed_models:
        wanted = "a request without a model" if model is None else f"the model {model!r}"
        raise GatewayError(
            403,
            f"This API key may not use {wanted}; it may use: {', '.join(key.allowed_models)}.",
            type_="permission_error",
            code="model_not_allowed",
            param="model",
        )


def _wants_stream(stream: Any) -> bool:
    """Whether the request asks for a stream. vLLM reads `stream` leniently (pydantic
    takes "yes", "true", 1 and "1" for true); the gateway, like OpenAI's API, takes only
    a JSON boolean (or null), so it never mistakes a stream for an answer."""
    if stream is None or isinstance(stream, bool):
        return stream is True
    kind = _JSON_TYPES.get(type(stream), "an object")
    raise GatewayError(
        400,
        f"Invalid type for 'stream': expected a boolean, but got {kind} instead.",
        code="invalid_type",
        param="stream",
    )


def _ask_for_usage(body: bytes, payload: dict[str, Any]) -> tuple[bytes, bool]:
    """The body with `stream_options.include_usage` on; and whether the client lacked it.

    When the client did not send `stream_options`, the option is spliced onto the end
    of the received bytes, so everything it did send goes upstream unchanged.
    """
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, False
    if "stream_options" not in payload:
        end = body.rstrip().rfind(b"}")
        return body[:end] + _USAGE_OPTIONS, True
    if options is not None and not isinstance(options, dict):
        return body, False  # malformed: let vLLM reject it in its own words
    # Continuous usage only applies with include_usage; the client would not have seen it.
    patched = {**(options or {}), "include_usage": True, "continuous_usage_stats": False}
    return orjson.dumps({**payload, "stream_options": patched}), True
