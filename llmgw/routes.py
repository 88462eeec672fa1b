"""The route table: every API route the gateway serves, and how it treats each.

One line per route: its method and path, what kind of request it is, whether it may
stream, how its token usage is read, and which API's error shape its clients expect.
The router (`proxy.add_routes`), the allow-list (a path not here is a 404 that never
reaches vLLM), `/v1/models`, the README's API table (`tests/test_routes.py` checks it)
and the tests all read this table, so a new route is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a route's request is, for its demand in tokens: generation (chat, completion),
# a prompt read only (embedding, pooling: rerank and score), or no tokens at all
# (models, tokenize: charged as a request).
RouteKind = Literal["chat", "completion", "embedding", "pooling", "tokenize", "models"]
# Where a route's token counts come from: `openai`, the `usage` object of OpenAI's
# shape (in the body, or in a stream's usage chunk; rerank's and score's have its
# prompt_tokens); `none`, no tokens (the request alone is counted).
UsageSource = Literal["openai", "none"]
ErrorShape = Literal["openai"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    kind: RouteKind
    usage: UsageSource
    summary: str  # for the README's API table
    streams: bool = False  # honours `"stream": true`
    errors: ErrorShape = "openai"


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/chat/completions", "chat", "openai", "chat completions", streams=True),
    Route("POST", "/v1/completions", "completion", "openai", "text completions", streams=True),
    Route("POST", "/v1/embeddings", "embedding", "openai", "embeddings"),
    Route(
        "POST",
        "/v1/rerank",
        "pooling",
        "openai",
        "rerank (a reranker model; also /rerank, /v2/rerank)",
    ),
    Route("POST", "/rerank", "pooling", "openai", "rerank, as Jina's API names it"),
    Route("POST", "/v2/rerank", "pooling", "openai", "rerank, as Cohere's v2 API names it"),
    Route("POST", "/v1/score", "pooling", "openai", "scores of text pairs (a cross-encoder model)"),
    Route("POST", "/score", "pooling", "openai", "scores of text pairs (also /v1/score)"),
    Route(
        "POST",
        "/tokenize",
        "tokenize",
        "none",
        "a text's or messages' token ids (no tokens charged)",
    ),
    Route("POST", "/detokenize", "tokenize", "none", "token ids back to text (no tokens charged)"),
    Route(
        "GET",
        "/v1/models",
        "models",
        "none",
        "the models of the healthy upstreams, limited to those the key may use",
    ),
)
