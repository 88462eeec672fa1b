"""The route table: every API route the gateway serves, and how it treats each.

One line per route: its method and path, what kind of request it is, whether it may
stream and in which API's events, how its token usage is read, and which API's error
shape its clients expect. The router (`proxy.add_routes`), the allow-list (a path not
here is a 404 that never reaches vLLM), `/v1/models`, the README's API table
(`tests/test_routes.py` checks it) and the tests all read this table, so a new route is
one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import Shape

# What a route's request is, for its demand in tokens: generation (chat, completion,
# responses, messages), a prompt read only (embedding, pooling: rerank and score), or
# no tokens at all (models, tokenize, count_tokens, a stored response, audio, whose
# usage vLLM reports in seconds: charged as a request).
RouteKind = Literal[
    "chat",
    "completion",
    "responses",
    "messages",
    "embedding",
    "pooling",
    "tokenize",
    "count_tokens",
    "stored_response",
    "audio",
    "models",
]
# Where a route's token counts come from: `reported`, the `usage` vLLM reports (in the
# body, or in a stream's usage chunk or final event; in OpenAI's, the Responses API's or
# Anthropic's words); `none`, no tokens (the request alone is counted).
UsageSource = Literal["reported", "none"]
# Which API's events a stream of the route carries.
Events = Literal["openai", "responses", "anthropic"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    kind: RouteKind
    usage: UsageSource
    summary: str  # for the README's API table
    streams: bool = False  # honours `"stream": true`
    events: Events = "openai"
    errors: Shape = "openai"


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/chat/completions", "chat", "reported", "chat completions", streams=True),
    Route("POST", "/v1/completions", "completion", "reported", "text completions", streams=True),
    Route(
        "POST",
        "/v1/responses",
        "responses",
        "reported",
        "the Responses API (Codex CLI, the OpenAI Agents SDK)",
        streams=True,
        events="responses",
    ),
    Route(
        "GET",
        "/v1/responses/{response_id}",
        "stored_response",
        "none",
        "a stored response, from the upstream that made it, for the key that made it",
    ),
    Route(
        "POST",
        "/v1/responses/{response_id}/cancel",
        "stored_response",
        "none",
        "cancel a background response, at the upstream that runs it",
    ),
    Route(
        "POST",
        "/v1/messages",
        "messages",
        "reported",
        "Anthropic's Messages API (Claude Code, the Anthropic SDK)",
        streams=True,
        events="anthropic",
        errors="anthropic",
    ),
    Route(
        "POST",
        "/v1/messages/count_tokens",
        "count_tokens",
        "none",
        "a Messages API request's input tokens (charged as a request, no tokens)",
        errors="anthropic",
    ),
    Route("POST", "/v1/embeddings", "embedding", "reported", "embeddings"),
    Route("POST", "/v1/rerank", "pooling", "reported", "rerank (a reranker model)"),
    Route("POST", "/rerank", "pooling", "reported", "rerank, as Jina's API names it"),
    Route("POST", "/v2/rerank", "pooling", "reported", "rerank, as Cohere's v2 API names it"),
    Route("POST", "/v1/score", "pooling", "reported", "scores of text pairs (a cross-encoder)"),
    Route("POST", "/score", "pooling", "reported", "scores of text pairs (also /v1/score)"),
    Route(
        "POST",
        "/v1/audio/transcriptions",
        "audio",
        "none",
        "speech to text (a multipart upload, within max_body_bytes; charged as a request)",
    ),
    Route(
        "POST",
        "/v1/audio/translations",
        "audio",
        "none",
        "speech to English text (a multipart upload; charged as a request)",
    ),
    Route("POST", "/tokenize", "tokenize", "none", "token ids (no tokens charged)"),
    Route("POST", "/detokenize", "tokenize", "none", "token ids to text (no tokens charged)"),
    Route(
        "GET",
        "/v1/models",
        "models",
        "none",
        "the models of the healthy upstreams, limited to those the key may use",
    ),
)


def error_shape(path: str) -> Shape:
    """The error shape for a request to `path`, routed or not: Anthropic's under the
    Messages API (a GET of /v1/messages, a 405, is answered so its SDK reads it too)."""
    return "anthropic" if path == "/v1/messages" or path.startswith("/v1/messages/") else "openai"
