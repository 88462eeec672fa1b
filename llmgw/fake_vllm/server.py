"""The fake on HTTP: handlers, the middleware that records and renders errors, the app
factory and ``FakeVLLM``, the app on a real socket that can stop and start again.

Handlers pace tokens and inject the failures ``FakeVLLMBehaviour`` asks for; what they send
comes from ``bodies``. With ``behaviour.simulation`` the app runs an ``engine``: a chat or
completion request of one prompt is queued there, and its tokens go out as the engine's
steps sample them (the first when its prefill is done); a client that leaves aborts it.
Follows ``serve/middleware/x_request_id.py``, ``serve/instrumentator/health.py`` and
``vllm/v1/engine/async_llm.py`` (the "Aborted request(s) %s." log line when a client
disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .anthropic import add_routes as add_anthropic_routes
from .audio import add_routes as add_audio_routes
from .behaviour import (
    BEHAVIOUR_KEY,
    ENGINE_KEY,
    FAKE_VLLM_VERSION,
    FakeVLLMBehaviour,
    RecordedRequest,
)
from .bodies import embedding_response, full_response, model_list, stream_events
from .delivery import (
    CLIENT_GONE,
    LIVE_KEY,
    REQUEST_ID,
    RESET,
    LiveStreams,
    Pace,
    Script,
    generating,
    injected_failure,
    json_response,
    respond,
    stream,
)
from .engine import Engine
from .errors import ApiError, check_model, one_error, parse_json, streaming_error_event
from .metrics import add_routes as add_metrics_routes
from .plan import Plan, plan_generation
from .pooling import add_routes as add_pooling_routes
from .responses import add_routes as add_responses_routes
from .token_ids import prompt_token_ids
from .tokenizing import add_routes as add_tokenizing_routes
from .tokens import Kind, count_prompt_tokens, prompt_items

# The package's name, as when it was one module: log lines and caplog filters use it.
logger = logging.getLogger("llmgw.fake_vllm")


# --- handlers ------------------------------------------------------------------


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    beh = request.app[BEHAVIOUR_KEY]
    async with generating(beh):
        await injected_failure(beh)
        body = parse_json(request, await request.read())
        plan = plan_generation(request, body, kind, beh)
        request[REQUEST_ID] = plan.request_id
        engine = request.app.get(ENGINE_KEY)
        prompt_ids = prompt_token_ids(body) if engine is not None else None
        if engine is None or prompt_ids is None or plan.n_tokens[0] < 1:
            return await _answer(request, plan, beh)
        async with engine.generate(prompt_ids, plan.n_tokens[0]) as generation:
            return await _answer(request, plan, beh, generation.until)


async def _answer(
    request: web.Request, plan: Plan, beh: FakeVLLMBehaviour, pace: Pace | None = None
) -> web.StreamResponse:
    if plan.stream or beh.stream_regardless:
        events = stream_events(plan, beh, int(time.time()))
        error = beh.error_event or streaming_error_event()
        first = int(plan.kind == "chat")  # the role chunk comes before any token
        script = Script(events, first, sum(plan.n_tokens), error, b"data: [DONE]\n\n")
        return await stream(request, script, beh, pace)
    body = functools.partial(full_response, plan, beh)
    return await respond(request, max(plan.n_tokens), body, beh, pace=pace)


async def embeddings(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    body = parse_json(request, await request.read())
    texts = prompt_items(body.get("input"))
    if not texts or not all(isinstance(t, str) for t in texts):
        msg = "Input should be a valid string"
        raise one_error("string_type", ("body", "input"), msg, body.get("input"))
    check_model(body, beh)
    base = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    prompt_tokens = count_prompt_tokens(body)
    return json_response(embedding_response(texts, beh.models[0], base, prompt_tokens))


async def list_models(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    return json_response(model_list(beh.models, beh.max_model_len))


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return json_response({"version": FAKE_VLLM_VERSION})


# --- the app -------------------------------------------------------------------


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
        except ApiError as exc:
            if isinstance(exc.body, bytes):  # an injected body, sent as it is
                resp = web.Response(status=exc.status, body=exc.body, headers=exc.headers)
            else:
                resp = json_response(exc.body, exc.status, exc.headers)
        except web.HTTPException as exc:
            if exc.status not in (404, 405):
                raise
            detail = {"detail": HTTPStatus(exc.status).phrase}  # FastAPI's own body
            resp = json_response(detail, exc.status)
    except asyncio.CancelledError:
        if not request.get(RESET):
            _note_abort(request, beh)
        raise
    if request.get(CLIENT_GONE):
        _note_abort(request, beh)
    elif not request.get(RESET):
        beh.finished += 1
    return resp


def _note_abort(request: web.Request, beh: FakeVLLMBehaviour) -> None:
    request_id = request.get(REQUEST_ID, request.path)
    beh.aborted += 1
    beh.aborted_request_ids.append(request_id)
    logger.info("Aborted request(s) %s.", request_id)


async def _add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.app[BEHAVIOUR_KEY].enable_request_id_headers:
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id", uuid.uuid4().hex)


async def _run_engine(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[ENGINE_KEY].run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_fake_vllm_app(behaviour: FakeVLLMBehaviour | None = None) -> web.Application:
    """The fake as an app; a behaviour with ``simulation`` gets a running ``Engine``.
    ValueError when the simulated KV cache cannot hold ``max_model_len`` tokens."""
    app = web.Application(middlewares=[_observe])
    beh = app[BEHAVIOUR_KEY] = behaviour if behaviour is not None else FakeVLLMBehaviour()
    if beh.simulation is not None:
        beh.simulation.check_model_len(beh.max_model_len)
        app[ENGINE_KEY] = Engine(beh.simulation)
        app.cleanup_ctx.append(_run_engine)
    app[LIVE_KEY] = LiveStreams()
    app.on_response_prepare.append(_add_request_id_header)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_post("/v1/chat/completions", functools.partial(_generate, kind="chat"))
    app.router.add_post("/v1/completions", functools.partial(_generate, kind="completion"))
    app.router.add_post("/v1/embeddings", embeddings)
    add_responses_routes(app)
    add_anthropic_routes(app)
    add_tokenizing_routes(app)
    add_pooling_routes(app)
    add_audio_routes(app)
    add_metrics_routes(app)
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

    @property
    def engine(self) -> Engine | None:
        """The simulated engine while running with ``behaviour.simulation``."""
        return self._runner.app.get(ENGINE_KEY) if self._runner is not None else None

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
        live: LiveStreams = runner.app[LIVE_KEY]
        for transport in list(live):
            transport.abort()
        await runner.cleanup()
