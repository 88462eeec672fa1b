"""A fake vLLM OpenAI-compatible server: the only upstream stand-in for llmgw.

It owns vLLM's wire format as the gateway sees it, copied from vllm-project/vllm
(newest tree in the index, where ``vllm/entrypoints/*`` are shims to
``vllm/frontend/entrypoints/*``): ``entrypoints/openai/{chat_completion,completion}/
{serving,protocol}.py`` (bodies; chunks are ``model_dump_json(exclude_unset=True)``,
usage chunks add ``exclude_none``), ``entrypoints/generate/base/serving.py``
(``create_streaming_error_response``: ``json.dumps``, then ``[DONE]``),
``frontend/entrypoints/serve/exception_handling/{error_response,handlers/validation}.py``
and ``serve/engine/serving.py`` (error JSON, unknown-model 404, 400 "Bad Request" for
request validation), ``frontend/processing/renderers/params.py``, ``sampling_params.py``
and ``vllm/exceptions.py`` (length errors), ``entrypoints/serve/engine/protocol.py`` and
``frontend/entrypoints/openai/models/serving.py`` (model list; responses name the first
served model), ``frontend/entrypoints/pooling/embed/*``, ``serve/middleware/
x_request_id.py``, ``serve/instrumentator/health.py`` and ``vllm/v1/engine/async_llm.py``
("Aborted request(s) %s." when a client disconnects).

Token accounting is trivial so tests can predict it (``count_prompt_tokens``,
``count_completion_tokens``); generated token ``i`` is ``" tok{i}"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

logger = logging.getLogger(__name__)

FAKE_VLLM_VERSION = "0.32.0"
CHAT_TOKENS_PER_MESSAGE = 4  # role header and separators a chat template adds
CHAT_GENERATION_PROMPT_TOKENS = 2  # the assistant generation prompt
BOS_TOKENS = 1  # completions and embeddings tokenize with add_special_tokens=True
EMBEDDING_DIM = 8

FailMode = Literal["reset", "stall", "error", "http_error"]
Kind = Literal["chat", "completion"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any | None
    query: str = ""


@dataclass
class FakeVLLMBehaviour:
    """Knobs tests flip between requests, plus what the fake observed.

    ``fail`` and ``headers_delay`` apply to the inference routes (chat, completions,
    embeddings); ``/v1/models`` and ``/health`` keep answering so health checks pass.
    """

    models: list[str] = field(default_factory=lambda: ["fake-model"])
    max_model_len: int = 2048
    default_max_tokens: int = 16
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    headers_delay: float = 0.0
    fail: FailMode | None = None
    fail_after_tokens: int = 0
    http_error_status: int = 503
    http_error_retry_after: str | None = None
    http_error_times: int | None = None  # None: every request while fail == "http_error"
    system_fingerprint: str | None = f"vllm-{FAKE_VLLM_VERSION}-fake0000"
    enable_request_id_headers: bool = False  # vLLM's --enable-request-id-headers
    requests: list[RecordedRequest] = field(default_factory=list)
    started: int = 0
    finished: int = 0
    aborted: int = 0
    resets: int = 0
    open_streams: int = 0
    aborted_request_ids: list[str] = field(default_factory=list)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_until(self, predicate: Callable[[], bool], seconds: float = 5.0) -> None:
        """Poll ``predicate`` until true; TimeoutError after ``seconds``."""
        async with asyncio.timeout(seconds):
            while not predicate():  # noqa: ASYNC110 -- predicates are arbitrary, so poll
                await asyncio.sleep(0.005)


BEHAVIOUR_KEY = web.AppKey("fake_vllm_behaviour", FakeVLLMBehaviour)


class _LiveStreams(set[asyncio.Transport]):
    """Transports of responses still streaming, so stop() can cut them."""


_LIVE_KEY = web.AppKey("fake_vllm_live_streams", _LiveStreams)
_REQUEST_ID = web.RequestKey("fake_vllm_request_id", str)
_RESET = web.RequestKey("fake_vllm_reset", bool)  # the fake cut the connection itself
_CLIENT_GONE = web.RequestKey("fake_vllm_client_gone", bool)


# --- token accounting (pure; tests use it to predict usage) --------------------


def token_text(i: int) -> str:
    return f" tok{i}"


def completion_text(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


def _words(content: Any) -> int:
    if isinstance(content, list):  # content parts: only text parts count
        return sum(_words(p.get("text")) for p in content if isinstance(p, dict))
    return len(content.split()) if isinstance(content, str) else 0


def _prompt_items(value: Any) -> list[Any]:
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [value]  # a single pre-tokenized prompt
    return value if isinstance(value, list) else [value]


def prompt_token_counts(body: Mapping[str, Any]) -> list[int]:
    """Per prompt: chat = words + 4 per message + 2; text = words + 1; ids = len."""
    if "messages" in body:
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        per_message = sum(CHAT_TOKENS_PER_MESSAGE + _words(m.get("content")) for m in msgs)
        return [CHAT_GENERATION_PROMPT_TOKENS + per_message]
    value = body["prompt"] if "prompt" in body else body.get("input")
    return [len(p) if isinstance(p, list) else _words(p) + BOS_TOKENS for p in _prompt_items(value)]


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    return sum(prompt_token_counts(body))


def _requested_max(body: Mapping[str, Any], kind: Kind, default: int) -> tuple[str, int | None]:
    # vLLM's CompletionRequest turns a null max_tokens into 16 (our default), so
    # completions always carry a limit; chat leaves it unset until the model's EOS.
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        return "max_completion_tokens", int(body["max_completion_tokens"])
    if body.get("max_tokens") is not None:
        return "max_tokens", int(body["max_tokens"])
    return "max_tokens", default if kind == "completion" else None


def _length_and_finish(
    body: Mapping[str, Any], kind: Kind, default: int, room: int
) -> tuple[int, str]:
    requested = _requested_max(body, kind, default)[1]
    if requested is not None:
        return min(requested, room), "length"
    return min(default, room), ("stop" if default <= room else "length")


def count_completion_tokens(
    body: Mapping[str, Any], *, default_max_tokens: int = 16, max_model_len: int = 2048
) -> int:
    """Tokens generated per choice: the request's limit, else the server default."""
    kind: Kind = "chat" if "messages" in body else "completion"
    room = max_model_len - max(prompt_token_counts(body))
    return _length_and_finish(body, kind, default_max_tokens, room)[0]


def embedding_vector(text: str) -> list[float]:
    raw = [b / 127.5 - 1.0 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0  # vLLM normalizes embeddings
    return [round(v / norm, 6) for v in raw]


# --- vLLM's error shapes -------------------------------------------------------

_SANITIZERS = (
    (r" at 0x[0-9a-f]+>", ">"),
    (r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', ""),
    (r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>"),
    (r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>"),
)


def error_body(
    message: str, err_type: str = "BadRequestError", code: int = 400, param: str | None = None
) -> dict[str, Any]:
    for pattern, replacement in _SANITIZERS:  # vLLM's sanitize_message
        message = re.sub(pattern, replacement, message)
    return {"error": {"message": message.strip(), "type": err_type, "param": param, "code": code}}


def streaming_error_event(message: str = "Internal server error") -> bytes:
    """A GenerationError mid-stream; vLLM json.dumps it, so unlike chunks it has spaces."""
    body = error_body(message, "InternalServerError", 500)
    return f"data: {json.dumps(body)}\n\n".encode()


def _with_parameter(message: str, parameter: str | None = None, value: Any = None) -> str:
    """str() of vLLM's VLLMValidationError."""
    extras = [f"{k}={v}" for k, v in (("parameter", parameter), ("value", value)) if v is not None]
    return f"{message} ({', '.join(extras)})" if extras else message


class _ApiError(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})


def _bad_request(message: str, parameter: str | None = None, value: Any = None) -> _ApiError:
    return _ApiError(400, error_body(_with_parameter(message, parameter, value), param=parameter))


def _field_error(kind: str, loc: tuple[Any, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def _validation_error(errors: list[Any], param: str | None) -> _ApiError:
    """A FastAPI RequestValidationError as vLLM's exception handler renders it."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
    return _ApiError(400, error_body(message.rstrip(), "Bad Request", 400, param))


def _model_validator_error(body: Any, message: str, parameter: str) -> _ApiError:
    # Pydantic keeps the raised VLLMValidationError itself in ctx, hence its repr.
    msg = f"Value error, {_with_parameter(message, parameter)}"
    error = _field_error("value_error", ("body",), msg, body)
    rendered = str(error)[:-1] + f", 'ctx': {{'error': VLLMValidationError({message!r})}}}}"
    return _validation_error([rendered], parameter)


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Starlette's JSONResponse is compact json, like orjson.
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=orjson.dumps(body), headers=headers)


# --- request validation, in the order FastAPI and vLLM apply it ----------------


def _one_error(kind: str, loc: tuple[Any, ...], msg: str, value: Any, **extra: Any) -> _ApiError:
    error = _field_error(kind, loc, msg, value) | extra
    return _validation_error([error], ".".join(str(p) for p in loc))


def _parse_json(request: web.Request, raw: bytes) -> dict[str, Any]:
    ctype = request.headers.get("Content-Type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    body: Any = None
    if raw and (not ctype or media == "application/json" or media.endswith("+json")):
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            loc, ctx = ("body", exc.pos), {"error": exc.msg}
            raise _one_error("json_invalid", loc, "JSON decode error", {}, ctx=ctx) from exc
    if media != "application/json":  # vLLM's validate_json_request dependency
        message = "Unsupported Media Type: Only 'application/json' is allowed"
        raise _validation_error([message], None)
    if not raw:
        raise _one_error("missing", ("body",), "Field required", None)
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise _one_error("model_attributes_type", ("body",), msg, body)
    return body


def _check_fields(body: dict[str, Any], kind: Kind) -> None:
    if kind == "completion" and body.get("prompt") in (None, "", []):
        message = "Either prompt or prompt_embeds must be provided and non-empty."
        raise _model_validator_error(body, message, "prompt")
    if body.get("stream_options") and not body.get("stream"):
        message = "Stream options can only be defined when `stream=True`."
        raise _model_validator_error(body, message, "stream_options")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        msg = "Input should be a valid dictionary or instance of StreamOptions"
        raise _one_error("model_type", ("body", "stream_options"), msg, options)
    if kind == "chat" and "messages" not in body:
        raise _one_error("missing", ("body", "messages"), "Field required", body)
    if kind == "chat" and not isinstance(body["messages"], list):
        msg = "Input should be a valid list"
        raise _one_error("list_type", ("body", "messages"), msg, body["messages"])
    for key in ("max_tokens", "max_completion_tokens") if kind == "chat" else ("max_tokens",):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _one_error("int_type", ("body", key), "Input should be a valid integer", value)


def _check_model(body: Mapping[str, Any], beh: FakeVLLMBehaviour) -> None:
    model = body.get("model")  # absent or empty: vLLM serves its first model
    if model and model not in beh.models:
        message = f"The model `{model}` does not exist."
        raise _ApiError(404, error_body(message, "NotFoundError", 404, "model"))


def _check_lengths(body: Mapping[str, Any], kind: Kind, beh: FakeVLLMBehaviour) -> None:
    """The renderer's TokenizeParams checks, then SamplingParams' max_tokens >= 1."""
    param, requested = _requested_max(body, kind, beh.default_max_tokens)
    limit, out = beh.max_model_len, requested or 0
    if out > limit:
        message = f"{param}={out} cannot be greater than max_model_len=max_total_tokens={limit}."
        raise _bad_request(f"{message} Please request fewer output tokens.", param, out)
    for prompt in prompt_token_counts(body):
        if prompt > limit - out:
            raise _bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{out} output tokens and your prompt contains {prompt} input tokens, for a total "
                f"of {prompt + out} tokens. Please reduce the length of the input prompt or the "
                "number of requested output tokens.",
                "input_tokens",
                prompt,
            )
        effective = limit - prompt if requested is None else min(limit - prompt, requested)
        if effective < 1:
            raise _bad_request(
                f"max_tokens must be at least 1, got {effective}.", "max_tokens", effective
            )


@dataclass(frozen=True)
class _Plan:
    kind: Kind
    request_id: str
    model: str
    prompt_tokens: list[int]
    n_tokens: list[int]
    finish_reasons: list[str]
    stream: bool
    include_usage: bool
    continuous_usage: bool


def _plan(request: web.Request, body: dict[str, Any], kind: Kind, beh: FakeVLLMBehaviour) -> _Plan:
    _check_fields(body, kind)
    _check_model(body, beh)
    _check_lengths(body, kind, beh)
    # vLLM: X-Request-Id header, else the body's request_id, else a random uuid.
    base = request.headers.get("X-Request-Id") or body.get("request_id") or uuid.uuid4().hex
    prompts = prompt_token_counts(body)
    plans = [
        _length_and_finish(body, kind, beh.default_max_tokens, beh.max_model_len - p)
        for p in prompts
    ]
    options = body.get("stream_options") or {}
    usage = bool(options.get("include_usage"))  # StreamOptions.include_usage defaults to False
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return _Plan(
        kind, f"{prefix}-{base}", beh.models[0], prompts, [n for n, _ in plans],
        [f for _, f in plans], bool(body.get("stream")), usage,
        usage and bool(options.get("continuous_usage_stats")),
    )  # fmt: skip


# --- response bodies: vLLM's pydantic field order, nulls where it dumps them ---

_CHAT_MESSAGE_NULLS = ("refusal", "annotations", "audio", "function_call", "reasoning")
_RESPONSE_TAIL_NULLS = ("kv_transfer_params", "ec_transfer_params", "metrics")
_CHOICE_NULLS = ("stop_reason", "token_ids")


def _usage(prompt: int, completion: int, *, full: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
    usage["completion_tokens"] = completion
    if full:  # model_dump() keeps the unset details as null
        usage |= dict.fromkeys(("prompt_tokens_details", "completion_tokens_details"))
    return usage


def _full_response(plan: _Plan, beh: FakeVLLMBehaviour) -> dict[str, Any]:
    chat = plan.kind == "chat"
    head = {"id": plan.request_id, "object": "chat.completion" if chat else "text_completion"}
    choices = []
    for i, (n, finish) in enumerate(zip(plan.n_tokens, plan.finish_reasons, strict=True)):
        if chat:
            message = {"role": "assistant", "content": completion_text(n)}
            choice = {"index": i, "message": message | dict.fromkeys(_CHAT_MESSAGE_NULLS)}
        else:
            choice = {"index": i, "text": completion_text(n)}
        choice |= {"logprobs": None, "finish_reason": finish} | dict.fromkeys(_CHOICE_NULLS)
        extra = () if chat else ("prompt_logprobs", "prompt_token_ids")
        choices.append(choice | dict.fromkeys((*extra, "routed_experts")))
    body = head | {"created": int(time.time()), "model": plan.model, "choices": choices}
    body |= {"service_tier": None, "system_fingerprint": beh.system_fingerprint}
    body["usage"] = _usage(sum(plan.prompt_tokens), sum(plan.n_tokens), full=True)
    chat_only = ("prompt_logprobs", "prompt_token_ids", "prompt_text") if chat else ()
    return body | dict.fromkeys(chat_only + _RESPONSE_TAIL_NULLS)


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _stream_events(plan: _Plan, beh: FakeVLLMBehaviour, created: int) -> list[bytes]:
    """Each chunk as serialized with exclude_unset: only the fields vLLM passes."""
    chat = plan.kind == "chat"
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": plan.request_id, "object": obj, "created": created, "model": plan.model}
    events: list[bytes] = []
    for index, (n, prompt) in enumerate(zip(plan.n_tokens, plan.prompt_tokens, strict=True)):
        details = {"completion_tokens_details": None} if chat else {}
        if chat:
            delta = {"role": "assistant", "content": ""}
            first = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            role: dict[str, Any] = head | {"choices": [first]}
            if plan.continuous_usage:
                role["usage"] = _usage(prompt, 0) | details
            events.append(_sse(role | {"prompt_token_ids": None, "prompt_text": None}))
        for i in range(n):
            last = i == n - 1
            finish: dict[str, Any] = {"finish_reason": plan.finish_reasons[index] if last else None}
            if chat:
                finish |= {"stop_reason": None} if last else {}
                choice = {"index": 0, "delta": {"content": token_text(i)}, "logprobs": None}
                choice |= finish | {"token_ids": None}
            else:
                choice = {"index": index, "text": token_text(i), "logprobs": None}
                choice |= finish | dict.fromkeys(("stop_reason", "prompt_token_ids", "token_ids"))
            chunk: dict[str, Any] = head | {"choices": [choice]}
            if plan.continuous_usage:
                chunk["usage"] = _usage(prompt, i + 1) | details
            if last and not plan.include_usage and beh.system_fingerprint is not None:
                chunk["system_fingerprint"] = beh.system_fingerprint
            events.append(_sse(chunk))
    if plan.include_usage:
        usage = _usage(sum(plan.prompt_tokens), sum(plan.n_tokens))
        chunk = head | {"choices": [], "usage": usage}
        if beh.system_fingerprint is not None:
            chunk["system_fingerprint"] = beh.system_fingerprint
        events.append(_sse(chunk))
    return events


# --- handlers ------------------------------------------------------------------


async def _injected_failure(beh: FakeVLLMBehaviour) -> None:
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
    raise _ApiError(status, error_body(phrase, err_type, status), retry)


def _reset_connection(request: web.Request, beh: FakeVLLMBehaviour) -> None:
    request[_RESET] = True
    beh.resets += 1
    if request.transport is not None:
        request.transport.abort()


async def _stream(request: web.Request, plan: _Plan, beh: FakeVLLMBehaviour) -> web.StreamResponse:
    events = _stream_events(plan, beh, int(time.time()))
    token_events = sum(plan.n_tokens) + (plan.kind == "chat")  # role chunk counts as sent
    first_paced = 1 + (plan.kind == "chat")
    fail_at = min(beh.fail_after_tokens + (plan.kind == "chat"), token_events) if beh.fail else None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    transport, live = request.transport, request.app[_LIVE_KEY]
    beh.open_streams += 1
    try:
        if transport is not None:
            live.add(transport)
        await resp.prepare(request)
        await asyncio.sleep(beh.first_token_delay)
        for i, event in enumerate(events):
            if i == fail_at:
                break
            if first_paced <= i < token_events:
                await asyncio.sleep(beh.token_delay)
            await resp.write(event)
        if fail_at is not None and beh.fail == "reset":
            _reset_connection(request, beh)
            return resp
        if fail_at is not None and beh.fail == "stall":
            await asyncio.Future()  # until the client leaves or the server stops
        if fail_at is not None and beh.fail == "error":
            await resp.write(streaming_error_event())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        request[_CLIENT_GONE] = True
    finally:
        beh.open_streams -= 1
        live.discard(transport)
    return resp


async def _respond(request: web.Request, plan: _Plan, beh: FakeVLLMBehaviour) -> web.Response:
    n = max(plan.n_tokens)
    if beh.fail in ("reset", "stall", "error"):
        n = min(n, beh.fail_after_tokens)
    await asyncio.sleep(beh.first_token_delay + max(n - 1, 0) * beh.token_delay)
    if beh.fail == "reset":
        _reset_connection(request, beh)
    if beh.fail in ("reset", "stall"):
        await asyncio.Future()  # a reset cancels us right away via handler_cancellation
    if beh.fail == "error":  # GenerationError -> 500 before anything was sent
        raise _ApiError(500, error_body("Internal server error", "InternalServerError", 500))
    return _json_response(_full_response(plan, beh))


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    beh = request.app[BEHAVIOUR_KEY]
    await _injected_failure(beh)
    body = _parse_json(request, await request.read())
    plan = _plan(request, body, kind, beh)
    request[_REQUEST_ID] = plan.request_id
    return await (_stream(request, plan, beh) if plan.stream else _respond(request, plan, beh))


async def embeddings(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await _injected_failure(beh)
    body = _parse_json(request, await request.read())
    texts = _prompt_items(body.get("input"))
    if not texts or not all(isinstance(t, str) for t in texts):
        msg = "Input should be a valid string"
        raise _one_error("string_type", ("body", "input"), msg, body.get("input"))
    _check_model(body, beh)
    data = [
        {"index": i, "object": "embedding", "embedding": embedding_vector(t)}
        for i, t in enumerate(texts)
    ]
    base = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    head = {"id": f"embd-{base}", "object": "list", "created": int(time.time())}
    usage = _usage(count_prompt_tokens(body), 0, full=True)
    return _json_response(head | {"model": beh.models[0], "data": data, "usage": usage})


async def list_models(request: web.Request) -> web.Response:
    beh, now = request.app[BEHAVIOUR_KEY], int(time.time())
    permission: dict[str, Any] = {"id": f"modelperm-{uuid.uuid4().hex}"}
    permission["object"] = "model_permission"
    permission["created"] = now
    permission |= {"allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True}
    permission |= {"allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False}
    permission |= {"organization": "*", "group": None, "is_blocking": False}
    cards = [
        {"id": m, "object": "model", "created": now, "owned_by": "vllm", "root": m, "parent": None}
        | {"max_model_len": beh.max_model_len, "permission": [permission]}
        for m in beh.models
    ]
    return _json_response({"object": "list", "data": cards})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return _json_response({"version": FAKE_VLLM_VERSION})


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request, keep the counters, render errors the way vLLM does."""
    beh = request.app[BEHAVIOUR_KEY]
    raw = await request.read()
    parsed: Any = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw) if raw else None
    headers = {k.lower(): v for k, v in request.headers.items()}
    beh.requests.append(
        RecordedRequest(
            request.method, request.path, headers, raw, parsed, request.rel_url.raw_query_string
        )
    )
    beh.started += 1
    try:
        try:
            resp = await handler(request)
        except _ApiError as exc:
            resp = _json_response(exc.body, exc.status, exc.headers)
        except web.HTTPException as exc:
            if exc.status not in (404, 405):
                raise
            detail = {"detail": HTTPStatus(exc.status).phrase}  # FastAPI's own body
            resp = _json_response(detail, exc.status)
    except asyncio.CancelledError:
        if not request.get(_RESET):
            _note_abort(request, beh)
        raise
    if request.get(_CLIENT_GONE):
        _note_abort(request, beh)
    elif not request.get(_RESET):
        beh.finished += 1
    return resp


def _note_abort(request: web.Request, beh: FakeVLLMBehaviour) -> None:
    request_id = request.get(_REQUEST_ID, request.path)
    beh.aborted += 1
    beh.aborted_request_ids.append(request_id)
    logger.info("Aborted request(s) %s.", request_id)


async def _add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.app[BEHAVIOUR_KEY].enable_request_id_headers:
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id", uuid.uuid4().hex)


def create_fake_vllm_app(behaviour: FakeVLLMBehaviour | None = None) -> web.Application:
    app = web.Application(middlewares=[_observe])
    app[BEHAVIOUR_KEY] = behaviour if behaviour is not None else FakeVLLMBehaviour()
    app[_LIVE_KEY] = _LiveStreams()
    app.on_response_prepare.append(_add_request_id_header)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_post("/v1/chat/completions", functools.partial(_generate, kind="chat"))
    app.router.add_post("/v1/completions", functools.partial(_generate, kind="completion"))
    app.router.add_post("/v1/embeddings", embeddings)
    return app


class FakeVLLM:
    """The fake on a real socket; it can stop and start again on the same port."""

    def __init__(self, behaviour: FakeVLLMBehaviour | None = None) -> None:
        self.behaviour = behaviour if behaviour is not None else FakeVLLMBehaviour()
        self.host, self.port = "127.0.0.1", 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Listen; ``port=None`` reuses the previous port (an ephemeral one at first)."""
        if self._runner is not None:
            raise RuntimeError("FakeVLLM is already running")
        # handler_cancellation: a disconnect must cancel a handler sleeping between tokens.
        runner = web.AppRunner(
            create_fake_vllm_app(self.behaviour), handler_cancellation=True, shutdown_timeout=0.2
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, self.port if port is None else port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.host, self.port, self._runner = host, runner.addresses[0][1], runner

    async def stop(self) -> None:
        """Stop listening and cut live streams, like a crashed upstream."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        live: _LiveStreams = runner.app[_LIVE_KEY]
        for transport in list(live):
            transport.abort()
        await runner.cleanup()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmgw.fake_vllm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME")
    parser.add_argument("--tokens", type=int, default=16, help="default completion length")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeVLLM(FakeVLLMBehaviour(models=args.models or ["fake-model"]))
    fake.behaviour.max_model_len, fake.behaviour.default_max_tokens = (
        args.max_model_len,
        args.tokens,
    )
    fake.behaviour.first_token_delay = args.first_token_delay
    fake.behaviour.token_delay = args.token_delay
    await fake.start(args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
