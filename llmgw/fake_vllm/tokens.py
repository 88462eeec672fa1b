"""Token accounting: pure functions, so tests can predict usage without running the fake.

A word is a token. A chat prompt is its words plus ``CHAT_TOKENS_PER_MESSAGE`` per message
plus ``CHAT_GENERATION_PROMPT_TOKENS``; a text prompt is its words plus ``BOS_TOKENS``; a
pre-tokenized prompt is its length. Generated token ``i`` is ``" tok{i}"``. How many are
generated follows vLLM's limits (the request's, else the server default, capped by the room
left in ``max_model_len``). Embeddings hash the text, so equal inputs embed equally.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal

CHAT_TOKENS_PER_MESSAGE = 4  # role header and separators a chat template adds
CHAT_GENERATION_PROMPT_TOKENS = 2  # the assistant generation prompt
BOS_TOKENS = 1  # completions and embeddings tokenize with add_special_tokens=True
SCORE_PAIR_SPECIAL_TOKENS = 3  # a cross-encoder's [CLS] query [SEP] document [SEP]
EMBEDDING_DIM = 8

Kind = Literal["chat", "completion"]


def token_text(i: int) -> str:
    return f" tok{i}"


def completion_text(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


def _words(content: Any) -> int:
    if isinstance(content, list):  # content parts: only text parts count
        return sum(_words(p.get("text")) for p in content if isinstance(p, dict))
    return len(content.split()) if isinstance(content, str) else 0


def prompt_items(value: Any) -> list[Any]:
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [value]  # a single pre-tokenized prompt
    return value if isinstance(value, list) else [value]


def prompt_token_counts(body: Mapping[str, Any]) -> list[int]:
    """Per prompt: chat = words + 4 per message + 2; text = words + 1; ids = len."""
    # A completion or embedding request names its prompt; `messages` there is an extra
    # field vLLM ignores (and may be anything at all).
    if isinstance(body.get("messages"), list) and "prompt" not in body and "input" not in body:
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        per_message = sum(CHAT_TOKENS_PER_MESSAGE + _words(m.get("content")) for m in msgs)
        return [CHAT_GENERATION_PROMPT_TOKENS + per_message]
    value = body["prompt"] if "prompt" in body else body.get("input")
    return [len(p) if isinstance(p, list) else _words(p) + BOS_TOKENS for p in prompt_items(value)]


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    return sum(prompt_token_counts(body))


def responses_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Responses request as the chat messages its template renders: `instructions` as a
    system message, a string `input` as one user message, else each input item (items
    without `content`, such as function call outputs, count as empty messages)."""
    instructions = body.get("instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    value = body.get("input")
    if isinstance(value, str):
        return [*messages, {"role": "user", "content": value}]
    items = value if isinstance(value, list) else []
    return messages + [
        {"role": item.get("role", "user"), "content": item.get("content")}
        for item in items
        if isinstance(item, dict)
    ]


def anthropic_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Messages request as the chat messages vLLM converts it to: `system` (a string or
    text blocks) first, then each message; only text blocks count."""
    system = body.get("system")
    messages = [{"role": "system", "content": system}] if system else []
    items = body.get("messages")
    return messages + [m for m in items or [] if isinstance(m, dict)]


def count_chat_tokens(messages: list[dict[str, Any]]) -> int:
    """The chat rule on already-converted messages (Responses and Anthropic requests)."""
    return count_prompt_tokens({"messages": messages})


def requested_max(body: Mapping[str, Any], kind: Kind, default: int) -> tuple[str, int | None]:
    # vLLM's CompletionRequest turns a null max_tokens into 16 (our default), so
    # completions always carry a limit; chat leaves it unset until the model's EOS.
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        return "max_completion_tokens", int(body["max_completion_tokens"])
    if body.get("max_tokens") is not None:
        return "max_tokens", int(body["max_tokens"])
    return "max_tokens", default if kind == "completion" else None


def length_and_finish(
    body: Mapping[str, Any], kind: Kind, default: int, room: int
) -> tuple[int, str]:
    requested = requested_max(body, kind, default)[1]
    if requested is not None:
        return min(requested, room), "length"
    return min(default, room), ("stop" if default <= room else "length")


def count_completion_tokens(
    body: Mapping[str, Any], *, default_max_tokens: int = 16, max_model_len: int = 2048
) -> int:
    """Tokens generated per choice: the request's limit, else the server default."""
    kind: Kind = "chat" if "messages" in body else "completion"
    room = max_model_len - max(prompt_token_counts(body))
    return length_and_finish(body, kind, default_max_tokens, room)[0]


def embedding_vector(text: str) -> list[float]:
    raw = [b / 127.5 - 1.0 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0  # vLLM normalizes embeddings
    return [round(v / norm, 6) for v in raw]
