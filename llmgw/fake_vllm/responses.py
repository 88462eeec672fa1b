"""The Responses API (``/v1/responses``) as vLLM 0.32.0 serves it to a model without a
reasoning or tool parser (``SimpleContext``), which is what the fake's plain text is.

From ``vllm/entrypoints/openai/responses/``: ``api_router.py`` (the three routes; a
stream is ``event: {type}\\ndata: {model_dump_json(by_alias=True)}\\n\\n`` with no
``[DONE]``; bodies are ``model_dump(mode="json")``, so every field is present),
``protocol.py`` (``ResponsesRequest`` defaults, ``ResponsesResponse`` field order,
``from_request``, ``ResponseUsage``), ``serving.py`` (validation order, ``store`` only with
``VLLM_ENABLE_RESPONSES_API_STORE``, the not-found and cancel errors, the event sequence
of ``responses_stream_generator``) and ``streaming_events.py`` (the
``emit_simple_content_*`` events). Checked byte for byte (ids and times aside) against
those classes run in vLLM 0.32.0's own environment.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .behaviour import BEHAVIOUR_KEY, FakeVLLMBehaviour
from .delivery import (
    REQUEST_ID,
    Script,
    generating,
    injected_failure,
    json_response,
    reset_connection,
    respond,
    stream,
)
from .errors import (
    ApiError,
    bad_request,
    check_model,
    check_priority,
    error_body,
    one_error,
    parse_json,
)
from .tokens import (
    completion_text,
    count_chat_tokens,
    length_and_finish,
    responses_messages,
    token_text,
)


def random_uuid() -> str:
    """vllm.utils.random_uuid: 16 hex digits."""
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"


def _not_found(response_id: str) -> ApiError:
    message = f"Response with id '{response_id}' not found."
    return ApiError(404, error_body(message, "invalid_request_error", 404, "response_id"))


def _invalid(message: str, param: str, status: int = 400) -> ApiError:
    return ApiError(status, error_body(message, "invalid_request_error", status, param))


@dataclass(frozen=True)
class ResponsesPlan:
    body: Mapping[str, Any]
    response_id: str
    model: str
    created: int
    prompt_tokens: int
    max_tokens: int  # SamplingParams.max_tokens, which the response reports as max_output_tokens
    n_tokens: int
    finish: str
    stream: bool
    store: bool


def _check_request(body: dict[str, Any]) -> None:
    """FastAPI's and ResponsesRequest's own validators, before any handler code runs."""
    if "input" not in body:
        # vLLM 0.32's handler describes a container input rather than printing it.
        raise one_error(
            "missing", ("body", "input"), "Field required", f"<dict of {len(body)} items>"
        )
    for key in ("max_output_tokens",):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise one_error("int_type", ("body", key), "Input should be a valid integer", value)
    if body.get("background") and body.get("store", True) is False:
        raise bad_request("background can only be used when `store` is true", "background")


def _plan(request: web.Request, body: dict[str, Any], beh: FakeVLLMBehaviour) -> ResponsesPlan:
    _check_request(body)
    beh.priorities.append(check_priority(body))
    check_model(body, beh)
    store = body.get("store", True) is not False
    if body.get("background"):
        if store and not beh.enable_responses_store:
            raise _invalid(
                "This vLLM engine does not support `store=True` and therefore does not "
                "support the background mode. To enable these features, set the environment "
                "variable `VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                "background",
            )
        # vLLM runs it as a task and answers "queued" at once; the fake does not model that.
        message = "The fake vLLM does not model background responses."
        raise ApiError(501, error_body(message, "NotImplementedError", 501))
    store = store and beh.enable_responses_store  # vLLM silently drops `store` without it
    previous = body.get("previous_response_id")
    if previous is not None and previous not in beh.stored_responses:
        raise _not_found(previous)
    prompt = count_chat_tokens(responses_messages(body))
    if prompt >= beh.max_model_len:
        raise _invalid(
            f"The engine prompt length {prompt} exceeds the max_model_len "
            f"{beh.max_model_len}. Please reduce prompt.",
            "input",
        )
    room = beh.max_model_len - prompt
    requested = body.get("max_output_tokens")
    max_tokens = room if requested is None else min(requested, room)  # get_max_tokens
    if max_tokens < 1:  # SamplingParams' check, raised and rendered by the global handler
        raise bad_request(
            f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
        )
    limit = {"max_tokens": requested}
    n, finish = length_and_finish(limit, "chat", beh.default_max_tokens, room)
    if beh.ignore_max_tokens is not None:  # an upstream that does not stop where asked
        n, finish = beh.ignore_max_tokens, "length"
    response_id = body.get("request_id") or f"resp_{random_uuid()}"
    return ResponsesPlan(
        body, response_id, beh.models[0], int(time.time()), prompt, max_tokens, n, finish,
        bool(body.get("stream")), store,
    )  # fmt: skip


# --- bodies --------------------------------------------------------------------


def _usage(plan: ResponsesPlan, beh: FakeVLLMBehaviour) -> dict[str, Any]:
    # SimpleContext keeps no per-turn metrics, so the per-turn lists stay empty.
    input_details: dict[str, Any] = {"cached_tokens": 0, "cache_write_tokens": 0}
    input_details |= {"input_tokens_per_turn": [], "cached_tokens_per_turn": []}
    output_details: dict[str, Any] = {"reasoning_tokens": 0, "tool_output_tokens": 0}
    output_details |= {"output_tokens_per_turn": [], "tool_output_tokens_per_turn": []}
    usage = {"input_tokens": plan.prompt_tokens, "input_tokens_details": input_details}
    usage |= {"output_tokens": plan.n_tokens, "output_tokens_details": output_details}
    usage["total_tokens"] = plan.prompt_tokens + plan.n_tokens
    return usage | (beh.reported_usage or {})


def _float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def response_body(
    plan: ResponsesPlan,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """ResponsesResponse.from_request, dumped in its field order."""
    req = plan.body
    tools = req.get("tools") or []
    tool_choice = req.get("tool_choice", "auto")
    if not tools and tool_choice in ("auto", "none"):  # ResponsesRequest.check_tool_usage
        tool_choice = "none"
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    body: dict[str, Any] = {"id": plan.response_id, "created_at": plan.created}
    body |= {"incomplete_details": incomplete, "instructions": req.get("instructions")}
    body |= {"metadata": req.get("metadata"), "model": plan.model, "object": "response"}
    parallel = req.get("parallel_tool_calls")
    body |= {"output": output, "parallel_tool_calls": True if parallel is None else parallel}
    body |= {"temperature": _float(req.get("temperature"), 1.0), "tool_choice": tool_choice}
    body |= {"tools": tools, "top_p": _float(req.get("top_p"), 1.0)}
    body |= {"background": bool(req.get("background")), "max_output_tokens": plan.max_tokens}
    body |= {"max_tool_calls": req.get("max_tool_calls")}
    body |= {"previous_response_id": req.get("previous_response_id"), "prompt": None}
    body |= {"reasoning": req.get("reasoning"), "service_tier": req.get("service_tier", "auto")}
    body |= {"status": status, "text": req.get("text")}
    logprobs = "message.output_text.logprobs" in (req.get("include") or [])
    body |= {"top_logprobs": req.get("top_logprobs", 0) if logprobs else None}
    body |= {"truncation": req.get("truncation", "disabled"), "usage": usage}
    body |= {"user": req.get("user")}
    body |= {"presence_penalty": _float(req.get("presence_penalty"), 0.0)}
    body |= {"frequency_penalty": _float(req.get("frequency_penalty"), 0.0)}
    tail = ("kv_transfer_params", "ec_transfer_params", "input_messages", "output_messages")
    return body | dict.fromkeys(tail)


def _part(text: str, logprobs: list[Any] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _message(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    head = {"id": item_id, "content": content, "role": "assistant", "status": status}
    return head | {"type": "message", "phase": None}


def _status(plan: ResponsesPlan) -> str:
    return "incomplete" if plan.finish == "length" else "completed"


def full_body(plan: ResponsesPlan, beh: FakeVLLMBehaviour) -> dict[str, Any]:
    text = completion_text(plan.n_tokens)
    content = [_part(text, None)] if text else []
    output = [_message(f"msg_{random_uuid()}", content, "completed")]
    return response_body(plan, _status(plan), output, _usage(plan, beh))


def _event(kind: str, payload: dict[str, Any], sequence: int, **tail: Any) -> bytes:
    """One event in the openai type's field order: ``payload``, the sequence number,
    ``tail`` (text.done's ``text``), then the type."""
    ordered = payload | {"sequence_number": sequence} | tail | {"type": kind}
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(ordered) + b"\n\n"


def stream_script(plan: ResponsesPlan, beh: FakeVLLMBehaviour) -> tuple[Script, dict[str, Any]]:
    """The stream's events (each token's with what vLLM sends alongside it) and the final
    response, which ``response.completed`` carries and the store keeps."""
    seq = iter(range(1_000_000))
    initial = {"response": response_body(plan, "in_progress", [], None)}
    events = [
        _event("response.created", initial, next(seq)),
        _event("response.in_progress", initial, next(seq)),
    ]
    item_id, text = f"msg_{random_uuid()}", ""
    at = {"content_index": 0, "item_id": item_id, "output_index": 0}
    for i in range(plan.n_tokens):
        token = b""
        if i == 0:  # the first content delta opens the message and its text part
            added = {"item": _message(item_id, [], "in_progress"), "output_index": 0}
            token += _event("response.output_item.added", added, next(seq))
            part = at | {"part": _part("", [])}
            token += _event("response.content_part.added", part, next(seq))
        text += token_text(i)
        delta = {"content_index": 0, "delta": token_text(i), "item_id": item_id}
        delta |= {"logprobs": [], "output_index": 0}
        events.append(token + _event("response.output_text.delta", delta, next(seq)))
    output: list[dict[str, Any]] = []
    close = b""
    if plan.n_tokens:
        done = {"content_index": 0, "item_id": item_id, "logprobs": [], "output_index": 0}
        close += _event("response.output_text.done", done, next(seq), text=text)
        part = at | {"part": _part(text, None)}
        close += _event("response.content_part.done", part, next(seq))
        output = [_message(item_id, [_part(text, None)], "completed")]
        item = {"item": output[0], "output_index": 0}
        close += _event("response.output_item.done", item, next(seq))
    final = response_body(plan, _status(plan), output, _usage(plan, beh))
    close += _event("response.completed", {"response": final}, next(seq))
    events.append(close)
    # A GenerationError mid-stream: vLLM validates its error JSON as a stream event, which
    # fails, so the generator raises and the connection is cut (error=None).
    return Script(events, 2, plan.n_tokens, None), final


# --- handlers ------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    beh = request.app[BEHAVIOUR_KEY]
    async with generating(beh):
        await injected_failure(beh)
        plan = _plan(request, parse_json(request, await request.read()), beh)
        request[REQUEST_ID] = plan.response_id
        if plan.stream or beh.stream_regardless:
            script, final = stream_script(plan, beh)
            resp = await stream(request, script, beh)
            if plan.store and not beh.fail:
                beh.stored_responses[plan.response_id] = final
            return resp
        body = full_body(plan, beh)
        resp = await respond(request, plan.n_tokens, lambda: body, beh)
        if plan.store:
            beh.stored_responses[plan.response_id] = body
        return resp


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    beh = request.app[BEHAVIOUR_KEY]
    response_id = request.match_info["response_id"]
    body = beh.stored_responses.get(response_id)
    if body is None:
        raise _not_found(response_id)
    if request.query.get("stream", "false").lower() in ("true", "1", "yes", "on"):
        # Only background responses keep their events; for any other vLLM's generator
        # raises "Unknown response_id" once the 200 headers are out, cutting the stream.
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        reset_connection(request, beh)
        return resp
    return json_response(body)


async def cancel_response(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    response_id = request.match_info["response_id"]
    if response_id not in beh.stored_responses:
        raise _not_found(response_id)
    # Every response the fake keeps has finished ("queued"/"in_progress" are background).
    raise _invalid("Cannot cancel a synchronous response.", "response_id")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel_response)
