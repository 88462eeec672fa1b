"""What a request sends upstream: its body, read within a deadline and checked before any
limit is charged (a 400, 403 or 404 costs nothing), and what it may cost in tokens.

The body goes upstream as the bytes received, but for these fields the gateway sets:
- `stream_options.include_usage` on a streaming chat or text completion, so the usage
  chunk comes (the relay removes it again if the client did not ask for it itself);
- `max_tokens`, when the request has none (its tier's `default_max_tokens`, so every
  request can be reserved, and none holds a GPU for a whole context's worth of tokens
  it never asked for), or lowered to what is left of a budget, so vLLM stops by itself;
- `priority`, the tier's, for an upstream that schedules by it, over any the client
  sent (a client does not choose its own place in the queue). Elsewhere it is not
  added: vLLM 0.32 ignores it there, but older engines refuse a priority they do not
  schedule by.
Fields the request does not have are spliced onto the end of the received bytes, so
everything it did send goes upstream unchanged; otherwise the body is encoded again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .context import RequestContext
from .errors import GatewayError
from .keys import KEY_PREFIX, ApiKey
from .limits import NOTHING, Demand, Limits, tier_of
from .multipart import boundary_of, text_field
from .routes import Route
from .state import CONTEXT, SETTINGS, UPSTREAMS
from .usage import MAX_REPORTED_TOKENS, estimate_prompt_tokens

MAX_CHOICES = 1000
# A text completion without max_tokens generates 16 tokens (OpenAI's documented default,
# and vLLM's): that, not the tier's default_max_tokens, is what it is given.
COMPLETION_DEFAULT_MAX_TOKENS = 16
# What JSON calls each type, for OpenAI's "expected a boolean, but got a string" message.
_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", list: "an array"}


@dataclass(slots=True)
class Outgoing:
    """The request as it goes upstream."""

    received: bytes
    payload: dict[str, Any]
    stream: bool  # the client asked for a stream
    strip_usage: bool  # the gateway, not the client, asked for the usage chunk
    demand: Demand  # what it may cost in tokens
    # The most completion tokens it may generate (max_tokens × n), when its key counts
    # tokens: a stream past this (an upstream ignoring max_tokens) is cut.
    ceiling: int | None = None
    cap_field: str = "max_tokens"  # the field that caps its generation
    _fields: dict[str, Any] = field(default_factory=dict)  # set by the gateway
    _bodies: dict[int | None, bytes] = field(default_factory=dict)  # by priority

    def grant(self, granted: int) -> None:
        """The limits granted `granted` tokens: less than the demand lowers max_tokens
        to what was granted."""
        demand = self.demand
        if granted >= demand.total or not demand.completion:
            return
        per_choice = max(1, (granted - demand.prompt) // demand.choices)
        self._fields[self.cap_field] = per_choice
        if self.ceiling is not None:
            self.ceiling = _ceiling(per_choice, demand.choices)
        self._bodies.clear()

    def body(self, priority: int | None) -> bytes:
        """The bytes to send an upstream (with `priority`, if it schedules by it)."""
        body = self._bodies.get(priority)
        if body is None:
            fields = self._fields if priority is None else {**self._fields, "priority": priority}
            body = self._bodies[priority] = _with_fields(self.received, self.payload, fields)
        return body


async def read_outgoing(
    request: web.Request, ctx: RequestContext, route: Route, key: ApiKey, limits: Limits
) -> Outgoing:
    """The request's body, checked: JSON, a model the key may use and some upstream
    serves, a boolean `stream`; and its demand in tokens. Fills in `ctx.payload` and
    `ctx.model`."""
    body = await _read_body(request)
    if route.kind == "audio":
        payload = _form_fields(request, body)
    else:
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
    stream = route.streams and _wants_stream(payload.get("stream"))
    fields: dict[str, Any] = {}
    # vLLM's Responses and Messages streams always end with their usage.
    strip_usage = stream and route.events == "openai" and _ask_for_usage(payload, fields)
    cap_field = _cap_field(route, payload)
    demand, ceiling = _demand(route, payload, cap_field, limits, key, request, fields)
    return Outgoing(body, payload, stream, strip_usage, demand, ceiling, cap_field, fields)


def _form_fields(request: web.Request, body: bytes) -> dict[str, Any]:
    """What the gateway reads of an upload's form: its model (the file goes upstream
    as received)."""
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise GatewayError(
            400,
            "The request body must be a multipart/form-data upload (a `file` and its `model`).",
        )
    model = text_field(body, boundary, "model")
    return {} if model is None else {"model": model}


def _demand(
    route: Route,
    payload: dict[str, Any],
    cap_field: str,
    limits: Limits,
    key: ApiKey,
    request: web.Request,
    fields: dict[str, Any],
) -> tuple[Demand, int | None]:
    """What the request may cost: its prompt, estimated, and max_tokens × n (the
    tier's default_max_tokens, added to the body, when it has none)."""
    if route.kind in ("embedding", "pooling"):
        return Demand(estimate_prompt_tokens(payload), 0), None
    if route.kind not in ("chat", "completion", "responses", "messages"):
        return NOTHING, None  # no tokens: charged as a request
    n = payload.get("n") if route.kind in ("chat", "completion") else None
    # Past what any model generates, a count only says the request will be refused (by
    # a limit, or by vLLM): kept within bounds both limiters count exactly in.
    choices = min(n, MAX_CHOICES) if type(n) is int and n >= 1 else 1
    prompt = estimate_prompt_tokens(payload)
    cap = payload.get(cap_field)
    if type(cap) is int and cap >= 1:
        max_tokens = bound = min(cap, MAX_REPORTED_TOKENS)
    elif cap is not None:
        # Not a count: vLLM's to refuse, in its own words. The default is reserved.
        max_tokens = bound = tier_of(key, request.app[SETTINGS]).default_max_tokens
    else:
        max_tokens, bound = _default_max_tokens(route, prompt, key, request)
        if bound == max_tokens:
            fields[cap_field] = max_tokens
    demand = Demand(prompt, max_tokens * choices, choices)
    return demand, _ceiling(bound, choices) if limits.counts_tokens else None


def _default_max_tokens(
    route: Route, prompt: int, key: ApiKey, request: web.Request
) -> tuple[int, int]:
    """What a request without max_tokens is reserved, and the most it may generate a
    choice: the tier's default_max_tokens (a text completion's: 16) both, set in the
    body, when it surely fits the model's context with the prompt (vLLM refuses a
    max_tokens that does not fit). Otherwise the body is left alone: vLLM generates at
    most the rest of the context, which is reserved, and never more than the context."""
    default = (
        COMPLETION_DEFAULT_MAX_TOKENS
        if route.kind == "completion"
        else tier_of(key, request.app[SETTINGS]).default_max_tokens
    )
    context = request.app[UPSTREAMS].context_length(request[CONTEXT].model)
    # Twice the prompt's estimate: the estimate (characters / 4) may be short of the
    # tokens vLLM counts (code, or text in other scripts, takes more tokens a character).
    if context is None or default + 2 * prompt <= context:
        return default, default
    return max(1, min(default, context - prompt)), context


def _cap_field(route: Route, payload: dict[str, Any]) -> str:
    """The field that caps generation: the Responses API's own; OpenAI's newer name
    when a chat request uses it (vLLM reads it before `max_tokens`); else `max_tokens`
    (text completions', and Anthropic's, where it is required)."""
    if route.kind == "responses":
        return "max_output_tokens"
    if route.kind == "chat" and "max_completion_tokens" in payload:
        return "max_completion_tokens"
    return "max_tokens"


def _ceiling(max_tokens: int, choices: int) -> int:
    """The most chunks a stream within its max_tokens relays besides its first: each
    token a chunk at most, and for each choice a role chunk and a last chunk that may
    carry no token, and one usage chunk. (vLLM may put several tokens in a chunk, never
    fewer than one: counting chunks never cuts a stream that kept to its max_tokens.)"""
    return (max_tokens + 2) * choices + 1


def _with_fields(body: bytes, payload: dict[str, Any], fields: dict[str, Any]) -> bytes:
    """`body` with `fields` set: spliced onto its end when the request has none of
    them (its own bytes unchanged), else encoded again."""
    if not fields:
        return body
    if not payload or any(name in payload for name in fields):
        return orjson.dumps({**payload, **fields})
    end = body.rstrip().rfind(b"}")
    return body[:end] + b"," + orjson.dumps(fields)[1:]


async def read_plain(request: web.Request) -> Outgoing:
    """A request with no generation in it (a stored response's retrieval or cancel):
    its body, whatever it is, passed on as received."""
    body = await _read_body(request)
    return Outgoing(body, {}, stream=False, strip_usage=False, demand=NOTHING)


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


def _ask_for_usage(payload: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Set `stream_options.include_usage` among `fields`; whether the client lacked it."""
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    if options is not None and not isinstance(options, dict):
        return False  # malformed: let vLLM reject it in its own words
    if options is None and "stream_options" not in payload:
        fields["stream_options"] = {"include_usage": True}
        return True
    # Continuous usage only applies with include_usage; the client would not have seen it.
    fields["stream_options"] = {
        **(options or {}),
        "include_usage": True,
        "continuous_usage_stats": False,
    }
    return True
