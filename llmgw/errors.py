"""Every error leaves the gateway in OpenAI's JSON shape, built here.

`{"error": {"message", "type", "param", "code"}}` is what the OpenAI SDK parses into its
exceptions. The gateway's own errors, aiohttp's (404, 405, 413) and vLLM's (which puts
the exception class name in `type` and the status number in `code`) all pass through
`error_body`, so a client never has to handle a second shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

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


def default_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class ErrorFields(TypedDict, total=False):
    type_: str | None  # OpenAI's category; from the status when absent
    code: str | None
    param: str | None
    headers: Mapping[str, str] | None


def error_response(status: int, message: str, **fields: Unpack[ErrorFields]) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(
            message,
            fields.get("type_") or default_type(status),
            fields.get("code"),
            fields.get("param"),
        ),
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

    def response(self) -> web.Response:
        return error_response(self.status, self.message, **self._fields)


def normalise_upstream_error(status: int, body: bytes) -> tuple[bytes, str | None]:
    """vLLM's error body (either its current `{"error": {...}}` or its older flat
    `{"object": "error", ...}` shape) in OpenAI's shape; and, when the body held no
    message (a proxy's HTML page, a traceback, bytes), its text for the log: the client
    is told only the status, never an upstream's internals."""
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
