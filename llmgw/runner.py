"""The aiohttp runner the gateway is served by, in production and in the tests alike.

It differs from a plain `AppRunner` in its connection handler:

- A request aiohttp cannot even parse (a header over the size limit, a malformed
  request line) is answered by aiohttp itself, before any middleware, as plain text
  that quotes the offending bytes, and it logs them with a traceback. Those bytes can
  hold an API key. Here such a request gets OpenAI's error shape with a fixed message,
  and the log names only the kind of error.
- aiohttp has no deadline for a request's headers: its keep-alive timer alone closes a
  connection whose headers never complete, after `keepalive_timeout`. Here the headers
  must be complete within `[server] header_timeout`, counted from the connection's
  opening or, on a kept-alive connection, from the next request's first byte; a client
  that trickles them (slowloris) gets 408 and is disconnected. (The body has its own
  deadline, `body_timeout`, kept where it is read: `proxy._read_request`.)
- A body that breaks off mid-way (undecodable compression, broken chunking) is the
  client's fault and answered 400 by the handler. aiohttp's C parser never tells the
  handler about broken chunking (the handler would wait for the rest until
  `body_timeout`), and aiohttp logs both kinds once more as an unhandled exception
  with a traceback. Here the handler's read fails at once, and the log has a debug line.
- An `Expect` other than 100-continue is also answered by aiohttp outside the
  middlewares: 417 in plain text quoting the header, or a 500 when it is not UTF-8.
  Here it is 417 in OpenAI's shape, decided before the app is asked.

aiohttp offers no public hook for any of this, so small overrides reach into it:
`RequestHandler.handle_error`, `log_exception`, `connection_made`, `data_received`,
`connection_lost`, `AppRunner._make_server` and the server's `request_handler`. The
bad-input, slow-client, malformed-HTTP and fuzz tests drive them and fail if an aiohttp
upgrade changes what they rely on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import default_type, error_body, error_response
from .state import SETTINGS

log = logging.getLogger("llmgw")

_RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def make_runner(app: web.Application, shutdown_timeout: float) -> web.AppRunner:
    """The runner for `app`; its connection timeouts come from the app's settings
    (`shutdown_timeout` is apart because tests shorten it)."""
    server = app[SETTINGS].server
    return _GatewayRunner(
        app,
        header_timeout=server.header_timeout,
        # A client that disconnects cancels its handler at once, which closes the
        # upstream connection, which is what makes vLLM stop generating.
        handler_cancellation=True,
        keepalive_timeout=server.keepalive_timeout,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )


def _timeout_response(header_timeout: float) -> bytes:
    """A whole 408 response, written straight to the transport: no request exists yet
    for aiohttp's response machinery to answer."""
    body = error_body(
        f"The request headers did not arrive within {header_timeout:g} s.",
        default_type(408),
        "request_timeout",
    )
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _GatewayHandler(RequestHandler):
    __slots__ = ("_body", "_header_deadline", "_header_started", "_header_timeout")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_started = False  # a byte of the awaited request has arrived
        self._body: StreamReader | None = None  # the body of the last request parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        # The first byte of a later request on a kept-alive connection starts its clock.
        # `_waiter` pending is aiohttp's own "between requests" state (its keep-alive
        # timer tests the same); while a request is being handled there is none, so
        # body bytes never arm this. (Nor do bytes pipelined behind a request in
        # progress: keepalive_timeout bounds those.)
        if data and self._header_deadline is None and self._between_requests():
            self._arm_header_deadline()
        self._header_started = self._header_started or bool(data)
        requests = self._request_count
        super().data_received(data)
        if self._request_count == requests:
            return
        self._disarm_header_deadline()  # headers complete (or refused as malformed)
        # A new message while the last one's body is unfinished can only be the parser
        # refusing that body (chunked framing broken mid-way). aiohttp's C parser drops
        # the body without failing it, and the handler reading it would wait for data
        # that will never come: fail it, so the handler answers 400 at once.
        if self._body is not None and not self._body.is_eof():
            self._body.set_exception(web.RequestPayloadError("malformed chunked encoding"))
        self._body = self._messages[-1][1] if self._messages else None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _arm_header_deadline(self) -> None:
        self._header_started = False
        self._header_deadline = self._loop.call_later(
            self._header_timeout, self._header_deadline_passed
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        transport = self.transport
        # Only a connection waiting for headers is cut: one that is mid-request or
        # mid-response is the body's and the upstream's timeouts' business.
        if transport is None or not self._between_requests():
            return
        if self._header_started:
            log.info(
                "request headers from %s incomplete after %g s: 408, connection closed",
                self.peername,
                self._header_timeout,
            )
            transport.write(_timeout_response(self._header_timeout))
        else:
            # Nothing was sent, so there is no request to answer; a 408 here could be
            # read as the answer to a request the client sends at this very moment.
            log.debug(
                "connection from %s sent nothing in %g s", self.peername, self._header_timeout
            )
        self.force_close()  # the transport sends what was written, then closes

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # A body that breaks mid-way (bad compression, bad chunking) was answered 400 by
        # the handler; aiohttp then drains the rest, meets the same error again and logs
        # it as an unhandled exception with a traceback. A client's fault is no error.
        if isinstance(kwargs.get("exc_info"), web.RequestPayloadError):
            log.debug("request body from %s broke off: connection closed", self.peername)
            return
        super().log_exception(*args, **kwargs)

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
    header_timeout: float  # set by _GatewayRunner._make_server

    def __call__(self) -> RequestHandler:
        return _GatewayHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs
        )


def _expectations(handler: _RequestHandler) -> _RequestHandler:
    """`handler` answering an `Expect` other than 100-continue in OpenAI's shape.

    aiohttp answers it itself, outside the middlewares: 417 in plain text that quotes
    the header, or, when the header is not UTF-8, a 500 with a traceback in the log.
    """

    async def handle(request: BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT, "100-continue")
        # aiohttp heeds Expect on HTTP/1.1 only, and 100-continue is all it knows.
        if request.version == HttpVersion11 and expect.lower() != "100-continue":
            return error_response(
                417,
                "The only Expect this server meets is 100-continue.",
                code="expectation_failed",
            )
        return await handler(request)

    return handle


class _GatewayRunner(web.AppRunner):
    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer  # only __call__ differs: same state, same layout
        assert isinstance(server, _GatewayServer)
        server.header_timeout = self._header_timeout
        server.request_handler = _expectations(server.request_handler)
        return server
