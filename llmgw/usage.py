"""Token usage: read from what vLLM reports, or estimated when it reported nothing.

vLLM reports usage in every non-streaming response body and, for streams, in the final
usage chunk (which the gateway always asks for). Only when that is missing (a stream
cut short, an upstream that does not report) does the gateway estimate, and the ledger
row says so in `usage_source`. A count that cannot be true (negative, not a whole number,
or beyond `MAX_REPORTED_TOKENS`) is not believed: the row is estimated and marked
`invalid`, so one upstream's bad number neither falsifies a user's totals nor reaches
the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

# A common rule of thumb for English text and BPE tokenizers; only used when the
# upstream reported nothing, and marked `estimated` in the ledger.
CHARS_PER_TOKEN = 4


# No request comes near this many tokens (a million-token context is 10^6): a larger
# count, like a negative one, is an upstream's fault, and stored as it is it would corrupt
# the user's totals (or, past 2^63, stop the ledger: SQLite cannot store it).
MAX_REPORTED_TOKENS = 10**9


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class InvalidUsage:
    """A `usage` the upstream reported that cannot be true: not whole numbers, negative,
    or beyond `MAX_REPORTED_TOKENS`. `raw` is what it said, for one log line."""

    raw: str


def usage_of(obj: Any) -> Usage | InvalidUsage | None:
    """The `usage` of a parsed response or stream event, in any API's words: OpenAI's
    `prompt_tokens`/`completion_tokens`, or the Responses and Messages APIs'
    `input_tokens`/`output_tokens` (a Responses event holds it in its `response`;
    Anthropic counts cache reads and writes apart from `input_tokens`). None when it has
    none."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if usage is None and isinstance(inner := obj.get("response"), dict):
        usage = inner.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return _invalid(usage)
    if "prompt_tokens" not in usage and "input_tokens" in usage:
        parts = [usage.get(f) for f in ("input_tokens", *_ANTHROPIC_CACHE)]
        completion = usage.get("output_tokens")
        if all(p is None or _plausible(p) for p in parts) and _plausible(completion):
            return Usage(sum(p for p in parts if p is not None), completion)
        return _invalid(usage)
    prompt = usage.get("prompt_tokens")
    # Embeddings report no (or null) completion tokens.
    completion = usage.get("completion_tokens")
    completion = 0 if completion is None else completion
    if _plausible(prompt) and _plausible(completion):
        return Usage(prompt, completion)
    return _invalid(usage)


# Anthropic's input tokens read from and written to its prompt cache, which its
# `input_tokens` leaves out (vLLM reports them so when it counts cached prefixes).
_ANTHROPIC_CACHE = ("cache_read_input_tokens", "cache_creation_input_tokens")


def _plausible(count: Any) -> TypeGuard[int]:
    # bool is an int in Python, but `true` is no token count.
    return type(count) is int and 0 <= count <= MAX_REPORTED_TOKENS


def _invalid(usage: Any) -> InvalidUsage:
    return InvalidUsage(orjson.dumps(usage, default=repr).decode()[:500])


def parse_body(body: bytes) -> Any:
    """A response body as JSON; None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def estimate_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """A rough prompt size from the request: message texts, prompt or embedding input
    (a prompt given as token ids counts them). Any JSON at all: a malformed request is
    vLLM's to refuse, not the estimate's to fail on."""
    chars = tokens = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                chars += _text_length(message.get("content"))
    # Generation's prompt (and the Responses API's instructions, Anthropic's system),
    # embedding's input, and rerank's and score's texts.
    for field in (
        "prompt",
        "input",
        "instructions",
        "system",
        "query",
        "documents",
        "text_1",
        "text_2",
    ):
        value = payload.get(field)
        chars += _text_length(value)
        tokens += _token_ids(value)
    return tokens + math.ceil(chars / CHARS_PER_TOKEN)


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):  # strings, content parts, documents, or input items
        return sum(_text_length(item) for item in value)
    if isinstance(value, dict):  # {"text": ...}, or an item with its own content
        return _text_length(value.get("text")) + _text_length(value.get("content"))
    return 0


def _token_ids(value: Any) -> int:
    """Token ids given instead of text: a list of integers, or a list of such lists."""
    if not isinstance(value, list):
        return 0
    return sum(
        1 if type(item) is int else len(item) if isinstance(item, list) else 0 for item in value
    )
