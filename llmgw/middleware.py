"""The middlewares of the public app, outermost first: accounting, then error shaping.

Accounting gives every request its `RequestContext` and, however the request ends
(answer, error, client gone), turns it into exactly one ledger record and one
access-log line. Error shaping turns every exception into OpenAI's error JSON, aiohttp's
own 404/405/413 included, so the accounting above always sees a final status.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .context import CLIENT_CLOSED, RequestContext, RequestIds
from .errors import GatewayError, error_response
from .keys import redact_keys
from .ledger import UsageRecord
from .routes import error_shape
from .state import CLOCK, CONTEXT, LEDGER, LIVE, METRICS, TRUSTED_PROXIES
from .store import StoreUnavailable

access_log = logging.getLogger("llmgw.access")
log = logging.getLogger("llmgw")


def accounting_middleware() -> Middleware:
    ids = RequestIds()

    @web.middleware
    async def accounting(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = RequestContext(request.method, request.path, ids.next(), request.app[CLOCK].wall())
        request[CONTEXT] = ctx
        app = request.app
        app[METRICS].in_flight += 1
        status = 500
        try:
            response = await handler(request)
            status = ctx.status or response.status
            return response
        except (asyncio.CancelledError, ConnectionError):
            status = CLIENT_CLOSED if _client_gone(request) else 503
            raise
        finally:
            # Run once aiohttp has written the answer (it does not pause to do so): the
            # accounting of a request is none of the client's wait.
            asyncio.get_running_loop().call_soon(_account, app, request, ctx, status)

    return accounting


def _account(app: web.Application, request: web.Request, ctx: RequestContext, status: int) -> None:
    """The request's ledger record, live statistics, metrics and access line.

    `app` is the gateway's: by now `request.app` may be the admin sub-app the request
    was routed into."""
    metrics = app[METRICS]
    metrics.in_flight -= 1
    metrics.responses[status] += 1
    record = ctx.record(status)
    if record is not None:
        metrics.prompt_tokens += record.prompt_tokens
        metrics.completion_tokens += record.completion_tokens
        app[LEDGER].record(record)
        app[LIVE].observe(record)
    _log_access(app, request, ctx, record, status)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _log_access(
    app: web.Application,
    request: web.Request,
    ctx: RequestContext,
    record: UsageRecord | None,
    status: int,
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "request_id": ctx.request_id,
        "client": app[TRUSTED_PROXIES].client_of(request),
        "method": ctx.method,
        "path": ctx.path,
        "status": status,
    }
    if record is not None and ctx.key is not None:
        fields |= {
            "key_id": ctx.key.id,
            "key_prefix": ctx.key.key_prefix,
            "user": ctx.key.user_id,
            "model": record.model,
            "upstream": record.upstream,
            "duration_ms": round(record.duration_ms, 1),
            "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 1),
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "usage_source": record.usage_source,
        }
    access_log.info("%s %s %s", ctx.method, ctx.path, status, extra={"fields": fields})


def error_middleware() -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return exc.response(error_shape(request.path))
        except StoreUnavailable as exc:  # a read the database could not answer
            return error_response(
                503, str(exc), error_shape(request.path), code="database_unavailable"
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(
                exc.status,
                _http_error_message(request, exc),
                error_shape(request.path),
                headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None,
            )
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # The traceback names code, not data: no key or prompt reaches the log.
            log.exception("unhandled error for %s %s", request.method, request.path)
            return error_response(
                500, "The gateway failed to handle this request.", error_shape(request.path)
            )

    return errors


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"Invalid URL ({request.method} {redact_keys(request.path)})."
    if exc.status == 405:
        return f"Method {request.method} is not allowed for {redact_keys(request.path)}."
    if exc.status == 413:
        return "The request body is larger than this gateway accepts."
    return exc.reason


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request id, and the key's rate-limit headers."""
    ctx = request.get(CONTEXT)
    if ctx is None:
        return
    response.headers["x-request-id"] = ctx.request_id
    if ctx.rate_headers:
        response.headers.update(ctx.rate_headers)
