"""Token ids of a prompt, for the simulated server's prefix cache (``engine``).

The ids follow the counting rules in ``tokens`` exactly, so ``len(prompt_token_ids(body))``
is the ``prompt_tokens`` the usage reports. They depend on the text alone (a word's id is
its CRC-32), never on the server or the process: the same system prompt has the same ids,
hence the same block hashes, on every server of a fleet and in every request.

The chat template renders each message as ``<start> <role> words… <end> <newline>``
(the 4 template tokens of ``CHAT_TOKENS_PER_MESSAGE``), then the generation prompt
``<start> <assistant>`` (the 2 of ``CHAT_GENERATION_PROMPT_TOKENS``); tests hold the
lengths to ``tokens``' rules. Generated token ``i`` is
the word ``tok{i}``, so when a client sends the answer back as the assistant's message,
the next turn's prompt begins with the previous prompt and the tokens generated for it:
the next turn finds the whole previous turn in the prefix cache, as with a real model
whose template renders history the way it generated it. A text prompt is ``<bos>`` then
its words; a pre-tokenized prompt is its own ids.

This is not the vocabulary of ``/tokenize`` (``tokenizing``), which numbers words in the
order it meets them: that would differ between servers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from .tokens import prompt_items, token_text

BOS_ID, START_ID, END_ID, NEWLINE_ID = 1, 2, 3, 4
ROLE_IDS = {"system": 5, "user": 6, "assistant": 7, "tool": 8, "developer": 9}
OTHER_ROLE_ID = 10
_U32 = 0xFFFF_FFFF  # block hashes encode ids as unsigned 32-bit


def word_ids(content: Any) -> list[int]:
    """The ids of the words of a message's content (a string, or content parts of which
    only text counts, as ``tokens._words`` counts them)."""
    if isinstance(content, list):
        return [i for p in content if isinstance(p, dict) for i in word_ids(p.get("text"))]
    if not isinstance(content, str):
        return []
    crc32 = zlib.crc32
    return [crc32(w.encode()) for w in content.split()]


def generated_token_id(i: int) -> int:
    """The id of generated token ``i`` (``tokens.token_text(i)``, one word)."""
    return word_ids(token_text(i))[0]


def _message_ids(message: Mapping[str, Any]) -> list[int]:
    role = message.get("role")
    role_id = ROLE_IDS.get(role, OTHER_ROLE_ID) if isinstance(role, str) else OTHER_ROLE_ID
    return [START_ID, role_id, *word_ids(message.get("content")), END_ID, NEWLINE_ID]


def prompt_token_ids(body: Mapping[str, Any]) -> list[int] | None:
    """The ids of a chat or completion request's prompt; None when the request carries
    more than one prompt (the simulation models one sequence per request).

    Branches as ``tokens.prompt_token_counts`` does, so the lengths agree.
    """
    if isinstance(body.get("messages"), list) and "prompt" not in body and "input" not in body:
        ids: list[int] = []
        for message in body["messages"]:
            if isinstance(message, dict):
                ids += _message_ids(message)
        return [*ids, START_ID, ROLE_IDS["assistant"]]
    value = body["prompt"] if "prompt" in body else body.get("input")
    items = prompt_items(value)
    if len(items) != 1:
        return None
    prompt = items[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) for t in prompt):
            return None
        return [t & _U32 for t in prompt]
    return [BOS_ID, *word_ids(prompt)]
