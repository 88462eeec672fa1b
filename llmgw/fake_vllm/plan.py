"""What one chat or completion request will produce, decided once up front.

``plan_generation`` validates the request (fields, model, lengths, in vLLM's order) and
fixes the request id, the token counts and the finish reasons, so the full body, the stream
events and the server's pacing and injected failures all agree on them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .behaviour import FakeVLLMBehaviour
from .errors import check_fields, check_lengths, check_model, check_priority
from .tokens import Kind, length_and_finish, prompt_token_counts


@dataclass(frozen=True)
class Plan:
    kind: Kind
    request_id: str
    model: str
    prompt_tokens: list[int]
    n_tokens: list[int]
    finish_reasons: list[str]
    stream: bool
    include_usage: bool
    continuous_usage: bool


def plan_generation(
    request: web.Request, body: dict[str, Any], kind: Kind, beh: FakeVLLMBehaviour
) -> Plan:
    check_fields(body, kind)
    check_model(body, beh)
    check_lengths(body, kind, beh)
    beh.priorities.append(check_priority(body))
    # vLLM: X-Request-Id header, else the body's request_id, else a random uuid.
    base = request.headers.get("X-Request-Id") or body.get("request_id") or uuid.uuid4().hex
    prompts = prompt_token_counts(body)
    plans = [
        length_and_finish(body, kind, beh.default_max_tokens, beh.max_model_len - p)
        for p in prompts
    ]
    if beh.ignore_max_tokens is not None:  # an upstream that does not stop where asked
        plans = [(beh.ignore_max_tokens, "length") for _ in prompts]
    options = body.get("stream_options") or {}
    usage = bool(options.get("include_usage"))  # StreamOptions.include_usage defaults to False
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Plan(
        kind, f"{prefix}-{base}", beh.models[0], prompts, [n for n, _ in plans],
        [f for _, f in plans], bool(body.get("stream")), usage,
        usage and bool(options.get("continuous_usage_stats")),
    )  # fmt: skip
