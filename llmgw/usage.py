"""Token usage: read from what vLLM reports, or estimated when it reported nothing.

vLLM reports usage in every non-streaming response body and, for streams, in the final
usage chunk (which the gateway always asks for). Only when that is missing (a stream
cut short, an upstream that does not report) does the gateway estimate, and the ledger
row says so in `usage_source`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# A common rule of thumb for English text and BPE tokenizers; only used when the
# upstream reported nothing, and marked `estimated` in the ledger.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


def usage_of(obj: Any) -> Usage | None:
    """The `usage` of a parsed response or stream chunk, if it has one."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def usage_from_body(body: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def estimate_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """A rough prompt size from the request: message texts, prompt or embedding input."""
    chars = 0
    for message in payload.get("messages") or ():
        if isinstance(message, dict):
            chars += _text_length(message.get("content"))
    chars += _text_length(payload.get("prompt"))
    chars += _text_length(payload.get("input"))
    return math.ceil(chars / CHARS_PER_TOKEN)


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):  # a list of strings, or of content parts
        return sum(
            _text_length(item.get("text") if isinstance(item, dict) else item) for item in value
        )
    return 0
