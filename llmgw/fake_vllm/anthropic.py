"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) as vLLM
0.32.0 serves it: a chat completion underneath, converted.

From ``vllm/entrypoints/anthropic/``: ``api_router.py`` (errors the handler returns become
``{"type": "error", "error": {"type", "message"}}`` with vLLM's own error type names and
status; bodies are ``model_dump(exclude_none=True)``), ``protocol.py`` (the request, the
message, the events; a request that fails pydantic validation, such as one without
``max_tokens``, never reaches the handler and gets vLLM's global 400 "Bad Request" in the
OpenAI shape) and ``serving.py`` (``_build_base_request``: ``max_tokens`` becomes
``max_tokens`` and ``max_completion_tokens``; a stream asks for ``include_usage`` and
``continuous_usage_stats``; ``message_stream_converter`` turns the chat chunks into events,
each ``model_dump_json(exclude_unset=True)`` after an ``event:`` line; the id is the chat
completion's ``chatcmpl-…``). vLLM 0.32 sends no ``ping`` event. Checked byte for byte
against ``message_stream_converter`` run on the fake's own chat stream.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .behaviour import BEHAVIOUR_KEY, FakeVLLMBehaviour
from .delivery import REQUEST_ID, Script, generating, injected_failure, json_response, respond
from .delivery import stream as send_stream
from .errors import ApiError, one_error, parse_json
from .plan import Plan, plan_generation
from .tokens import anthropic_messages, completion_text, count_chat_tokens, token_text

_STOP_REASONS = {"length": "max_tokens", "stop": "end_turn"}  # _to_anthropic_stop_reason

# What vLLM's converter sends when the chat stream under it carries vLLM's error event: it
# parses that event as a ChatCompletionStreamResponse, fails, and reports pydantic's error
# (as pydantic 2.14, in vLLM 0.32.0's environment, words it). The stream ends there.
_STREAM_ERROR_FIELDS = "\n".join(
    line
    for field in ("model", "choices")
    for line in (
        field,
        "  Field required [type=missing, input_value={'error': {'message': 'In...am': None, "
        "'code': 500}}, input_type=dict]",
        "    For further information visit https://errors.pydantic.dev/2.14/v/missing",
    )
)
_STREAM_ERROR_MESSAGE = (
    f"2 validation errors for ChatCompletionStreamResponse\n{_STREAM_ERROR_FIELDS}"
)


def error_shape(message: str, err_type: str, status: int = 400) -> dict[str, Any]:
    """translate_error_response: vLLM's error type and message in Anthropic's envelope."""
    return {"type": "error", "error": {"type": err_type, "message": message}}


def _translated(exc: ApiError) -> ApiError:
    if not isinstance(exc.body, dict) or "error" not in exc.body:
        return exc
    error = exc.body["error"]
    return ApiError(exc.status, error_shape(error["message"], error["type"]), exc.headers)


def _quoted(value: Any) -> Any:
    """How vLLM 0.32's validation handler quotes a value: containers only described."""
    if isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    return value


def _value_error(key: str, message: str, value: Any) -> ApiError:
    ctx = {"error": ValueError(message)}  # pydantic keeps the raised error: its repr shows
    return one_error("value_error", ("body", key), f"Value error, {message}", value, ctx=ctx)


def _check_request(body: dict[str, Any], *, count: bool) -> None:
    """The pydantic validation FastAPI runs first (rendered in the OpenAI shape)."""
    required = ("model", "messages") if count else ("model", "messages", "max_tokens")
    for key in required:
        if key not in body:
            raise one_error("missing", ("body", key), "Field required", _quoted(body))
    if not isinstance(body["messages"], list):
        msg = "Input should be a valid list"
        raise one_error("list_type", ("body", "messages"), msg, _quoted(body["messages"]))
    value = body.get("max_tokens")
    if not count and (isinstance(value, bool) or not isinstance(value, int)):
        msg = "Input should be a valid integer"
        raise one_error("int_type", ("body", "max_tokens"), msg, _quoted(value))
    if not count and isinstance(value, int) and value <= 0:
        raise _value_error("max_tokens", "max_tokens must be positive", value)
    if not body["model"]:
        raise _value_error("model", "Model is required", body["model"])


def _chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """AnthropicServingMessages.to_chat_completion_request, as far as the fake needs it."""
    chat: dict[str, Any] = {"model": body["model"], "messages": anthropic_messages(body)}
    chat |= {"max_tokens": body["max_tokens"], "max_completion_tokens": body["max_tokens"]}
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return chat


def _usage(prompt: int, output: int, beh: FakeVLLMBehaviour | None = None) -> dict[str, Any]:
    # The fake reports no prompt_tokens_details, so the cache fields stay unset (absent).
    usage = {"input_tokens": prompt, "output_tokens": output}
    return usage | ((beh.reported_usage or {}) if beh else {})


def message_body(plan: Plan, beh: FakeVLLMBehaviour) -> dict[str, Any]:
    text = completion_text(plan.n_tokens[0])
    body: dict[str, Any] = {"id": plan.request_id, "type": "message", "role": "assistant"}
    body |= {"content": [{"type": "text", "text": text}], "model": plan.model}
    body["stop_reason"] = _STOP_REASONS[plan.finish_reasons[0]]
    return body | {"usage": _usage(plan.prompt_tokens[0], plan.n_tokens[0], beh)}


def _event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def stream_script(plan: Plan, beh: FakeVLLMBehaviour) -> Script:
    prompt, n = plan.prompt_tokens[0], plan.n_tokens[0]
    message: dict[str, Any] = {"id": plan.request_id, "type": "message", "role": "assistant"}
    message |= {"content": [], "model": plan.model, "stop_reason": None, "stop_sequence": None}
    events = [_event({"type": "message_start", "message": message | {"usage": _usage(prompt, 0)}})]
    for i in range(n):
        token = b""
        if i == 0:  # the first text delta opens the text block
            block = {"type": "text", "text": ""}
            token = _event({"type": "content_block_start", "content_block": block, "index": 0})
        delta = {"type": "text_delta", "text": token_text(i)}
        events.append(token + _event({"type": "content_block_delta", "delta": delta, "index": 0}))
    close = _event({"type": "content_block_stop", "index": 0}) if n else b""
    stop = {"stop_reason": _STOP_REASONS[plan.finish_reasons[0]], "stop_sequence": None}
    usage = _usage(prompt, n, beh)
    events.append(close + _event({"type": "message_delta", "delta": stop, "usage": usage}))
    error = {"type": "internal_error", "message": _STREAM_ERROR_MESSAGE}
    error_event = _event({"type": "error", "error": error})
    done = _event({"type": "message_stop"})
    return Script(events, 1, n, error_event, done, error_ends=True)


async def create_message(request: web.Request) -> web.StreamResponse:
    beh = request.app[BEHAVIOUR_KEY]
    async with generating(beh):
        await injected_failure(beh, error_shape)
        body = parse_json(request, await request.read())
        _check_request(body, count=False)
        try:
            plan = plan_generation(request, _chat_body(body), "chat", beh)
        except ApiError as exc:
            raise _translated(exc) from exc
        request[REQUEST_ID] = plan.request_id
        if plan.stream or beh.stream_regardless:
            return await send_stream(request, stream_script(plan, beh), beh)
        error = ApiError(500, error_shape("Internal server error", "InternalServerError"))
        return await respond(request, plan.n_tokens[0], lambda: message_body(plan, beh), beh, error)


async def count_tokens(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh, error_shape)
    body = parse_json(request, await request.read())
    _check_request(body, count=True)
    model = body["model"]
    if model not in beh.models:  # render_chat_request checks the model first
        message = f"The model `{model}` does not exist. Valid aliases: {', '.join(beh.models)}."
        raise ApiError(404, error_shape(message, "NotFoundError"))
    tokens = count_chat_tokens(anthropic_messages(body))
    return json_response(
        {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", create_message)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
