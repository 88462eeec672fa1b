"""Response bodies and stream events, in vLLM's pydantic field order.

Full responses are ``model_dump()``-ed, so unset optional fields appear as null; stream
chunks are ``model_dump_json(exclude_unset=True)``, so each carries only the fields vLLM's
serving code passed (usage chunks add ``exclude_none``). Both are compact JSON, like orjson.
Follows ``entrypoints/openai/{chat_completion,completion}/{serving,protocol}.py``,
``frontend/entrypoints/openai/models/serving.py`` and ``frontend/entrypoints/pooling/embed/*``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from .behaviour import FakeVLLMBehaviour
from .plan import Plan
from .tokens import completion_text, embedding_vector, token_text

_CHAT_MESSAGE_NULLS = ("refusal", "annotations", "audio", "function_call", "reasoning")
_RESPONSE_TAIL_NULLS = ("kv_transfer_params", "ec_transfer_params", "metrics")
_CHOICE_NULLS = ("stop_reason", "token_ids")


def _usage(prompt: int, completion: int, *, full: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
    usage["completion_tokens"] = completion
    if full:  # model_dump() keeps the unset details as null
        usage |= dict.fromkeys(("prompt_tokens_details", "completion_tokens_details"))
    return usage


def full_response(plan: Plan, beh: FakeVLLMBehaviour) -> dict[str, Any]:
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
    usage = _usage(sum(plan.prompt_tokens), sum(plan.n_tokens), full=True)
    body["usage"] = usage | (beh.reported_usage or {})
    chat_only = ("prompt_logprobs", "prompt_token_ids", "prompt_text") if chat else ()
    return body | dict.fromkeys(chat_only + _RESPONSE_TAIL_NULLS)


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_events(plan: Plan, beh: FakeVLLMBehaviour, created: int) -> list[bytes]:
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
        chunk = head | {"choices": [], "usage": usage | (beh.reported_usage or {})}
        if beh.system_fingerprint is not None:
            chunk["system_fingerprint"] = beh.system_fingerprint
        events.append(_sse(chunk))
    return events


def embedding_response(
    texts: list[str], model: str, request_id: str, prompt_tokens: int
) -> dict[str, Any]:
    data = [
        {"index": i, "object": "embedding", "embedding": embedding_vector(t)}
        for i, t in enumerate(texts)
    ]
    head = {"id": f"embd-{request_id}", "object": "list", "created": int(time.time())}
    usage = _usage(prompt_tokens, 0, full=True)
    return head | {"model": model, "data": data, "usage": usage}


def model_list(models: list[str], max_model_len: int) -> dict[str, Any]:
    now = int(time.time())
    permission: dict[str, Any] = {"id": f"modelperm-{uuid.uuid4().hex}"}
    permission["object"] = "model_permission"
    permission["created"] = now
    permission |= {"allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True}
    permission |= {"allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False}
    permission |= {"organization": "*", "group": None, "is_blocking": False}
    cards = [
        {"id": m, "object": "model", "created": now, "owned_by": "vllm", "root": m, "parent": None}
        | {"max_model_len": max_model_len, "permission": [permission]}
        for m in models
    ]
    return {"object": "list", "data": cards}
