"""The aiohttp runner the gateway is served by, in production and in the tests alike.

It differs from a plain `AppRunner` in one place: a request aiohttp cannot even parse
(a header over the size limit, a malformed request line) is answered by aiohttp itself,
before any middleware, as plain text that quotes the offending bytes, and it logs them
with a traceback. Those bytes can hold an API key. Here such a request gets OpenAI's
error shape with a fixed message, and the log names only the kind of error.

aiohttp offers no public hook for this, so two small overrides reach into it:
`RequestHandler.handle_error` and `AppRunner._make_server`. The bad-input tests send
such requests and fail if an aiohttp upgrade changes either.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import error_response

log = logging.getLogger("llmgw")


def make_runner(app: web.Application, shutdown_timeout: float) -> web.AppRunner:
    return _GatewayRunner(
        app,
        # A client that disconnects cancels its handler at once, which closes the
        # upstream connection, which is what makes vLLM stop generating.
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )


class _ParseErrorHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # Plain scanners and TLS sent to an HTTP port are common: not worth a warning.
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
        log.log(level, "unparseable request from %s: %s", request.remote, type(exc).__name__)
        reason = (
            "A request line or header is too long."
            if isinstance(exc, LineTooLong)
            else "The request is not valid HTTP."
        )
        response = error_response(status, reason, code="malformed_request")
        response.force_close()
        return response


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ParseErrorHandler(self, loop=self._loop, **self._kwargs)


class _GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer  # only __call__ differs: same state, same layout
        return server
