"""Every error leaves the gateway in its API's JSON shape, built here.

OpenAI's, `{"error": {"message", "type", "param", "code"}}`, is what the OpenAI SDK
parses into its exceptions; Anthropic's, `{"type": "error", "error": {"type",
"message"}}`, what the Anthropic SDK parses, on the Messages API's routes. The gateway's
own errors, aiohttp's (404, 405, 413) and vLLM's (which puts the exception class name in
`type` and the status number in `code`, in either shape) all pass through `error_body`,
so a client never has to handle a shape its SDK does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict, Unpack

import orjson
from aiohttp import web

# OpenAI's `type` for a status when nothing more specific applies.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


# Anthropic's error types by status (its SDK picks the exception by status alone).
_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

Shape = Literal["openai", "anthropic"]


def default_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPE_BY_STATUS.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )


def error_body(
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    shape: Shape = "openai",
) -> bytes:
    if shape == "anthropic":
        # Anthropic's types go by status; the OpenAI-style type (`tokens`, `budget`) and
        # code say which limit, and the message says it too.
        return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class ErrorFields(TypedDict, total=False):
    type_: str | None  # OpenAI's category; from the status when absent
    code: str | None
    param: str | None
    headers: Mapping[str, str] | None


def error_response(
    status: int, message: str, shape: Shape = "openai", **fields: Unpack[ErrorFields]
) -> web.Response:
    type_ = (
        anthropic_type(status)
        if shape == "anthropic"
        else fields.get("type_") or default_type(status)
    )
    return web.Response(
        status=status,
        body=error_body(message, type_, fields.get("code"), fields.get("param"), shape),
        content_type="application/json",
        headers=fields.get("headers"),
    )


class GatewayError(Exception):
    """Raised inside a handler to answer with an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, **fields: Unpack[ErrorFields]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self._fields = fields

    def response(self, shape: Shape = "openai") -> web.Response:
        return error_response(self.status, self.message, shape, **self._fields)


def normalise_upstream_error(
    status: int, body: bytes, shape: Shape = "openai"
) -> tuple[bytes, str | None]:
    """vLLM's error body (its current `{"error": {...}}`, its older flat `{"object":
    "error", ...}`, or its Messages API's `{"type": "error", "error": {...}}`) in the
    route's shape; and, when the body held no message (a proxy's HTML page, a
    traceback, bytes), its text for the log: the client is told only the status, never
    an upstream's internals."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    info = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(info, dict):
        info = parsed if isinstance(parsed, dict) and "message" in parsed else {}
    message = info.get("message")
    unreadable = None
    if not isinstance(message, str) or not message:
        unreadable = body.decode("utf-8", "replace").strip()[:500]
        message = f"The model server answered with status {status}."
    if shape == "anthropic":
        return error_body(message, anthropic_type(status), shape=shape), unreadable
    param = info.get("param")
    normalised = error_body(
        message,
        _openai_type(info.get("type"), status),
        _openai_code(info.get("code"), status, message),
        param if isinstance(param, str) else None,
    )
    return normalised, unreadable


def _openai_type(upstream_type: Any, status: int) -> str:
    # vLLM's `type` is a Python class name ("BadRequestError"); OpenAI's are snake_case
    # categories ("invalid_request_error"). Keep a type that already is OpenAI's.
    if isinstance(upstream_type, str) and upstream_type and upstream_type[0].islower():
        return upstream_type
    return default_type(status)


def _openai_code(upstream_code: Any, status: int, message: str) -> str | None:
    if isinstance(upstream_code, str) and upstream_code:
        return upstream_code
    if status == 404 and "model" in message.lower():
        return "model_not_found"
    return None
