"""``/tokenize`` and ``/detokenize`` as vLLM 0.32.0 answers them
(``vllm/entrypoints/serve/tokenize/{api_router,protocol,serving}.py``): bodies are
``model_dump()``, so ``token_strs`` is null unless asked for.

The ids are the ones the simulated engine hashes into its prefix cache (``token_ids``):
a word's id is its CRC-32, the chat template's tokens have small fixed ids. Like a real
model's tokenizer they depend on the text alone, so every server of a fleet gives the
same text the same ids (a router that tokenizes on each worker, as vllm-router's
``cache_aware`` does, sees one vocabulary), and a long prompt costs a lookup a word. A
chat request's ids are its messages' then, with ``add_generation_prompt`` (the default),
the two of the assistant's turn; a prompt is ``<s>`` (with ``add_special_tokens``, the
default) then its words. The counts follow the fake's counting rules (``tokens``).
``/detokenize`` knows the words this server has tokenized or been sent.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from .behaviour import BEHAVIOUR_KEY, FakeVLLMBehaviour
from .delivery import injected_failure, json_response
from .errors import ApiError, check_model, error_body, one_error, parse_json
from .token_ids import (
    BOS_ID,
    END_ID,
    NEWLINE_ID,
    OTHER_ROLE_ID,
    ROLE_IDS,
    START_ID,
    prompt_token_ids,
    word_ids,
)

SPECIAL = {
    BOS_ID: "<s>",
    START_ID: "<|start|>",
    END_ID: "<|end|>",
    NEWLINE_ID: "\n",
    OTHER_ROLE_ID: "<|role|>",
    **{i: role for role, i in ROLE_IDS.items()},
}


def _words(content: Any) -> list[str]:
    if isinstance(content, list):  # content parts: only text parts count (tokens._words)
        return [w for p in content if isinstance(p, dict) for w in _words(p.get("text"))]
    return content.split() if isinstance(content, str) else []


def _learn(body: dict[str, Any], beh: FakeVLLMBehaviour) -> None:
    """Remember each word of the request by its id, for ``/detokenize``."""
    messages = body.get("messages")
    contents = (
        [m.get("content") for m in messages if isinstance(m, dict)]
        if isinstance(messages, list)
        else []
    )
    for content in [*contents, body.get("prompt")]:
        if isinstance(content, str):
            beh.vocabulary.update(_text_words(content))
        elif content is not None:
            words = _words(content)
            beh.vocabulary.update(zip(word_ids(" ".join(words)), words, strict=True))


@functools.lru_cache(maxsize=256)
def _text_words(text: str) -> dict[int, str]:
    """A text's words by id: a system prompt or a conversation's earlier messages come
    again and again, each time the length of a long prompt."""
    words = text.split()
    return dict(zip(word_ids(text), words, strict=True))


def _token_ids(body: dict[str, Any]) -> list[int]:
    if "messages" in body:  # TokenizeChatRequest: add_special_tokens defaults to False
        if not isinstance(body["messages"], list):
            raise one_error(
                "list_type", ("body", "messages"), "Input should be a valid list", body["messages"]
            )
        ids = prompt_token_ids({"messages": body["messages"]}) or []
        return ids if body.get("add_generation_prompt", True) else ids[:-2]
    ids = prompt_token_ids({"prompt": body["prompt"]}) or []
    return ids if body.get("add_special_tokens", True) else ids[1:]


def _token_str(token: int, beh: FakeVLLMBehaviour) -> str:
    return SPECIAL.get(token) or beh.vocabulary[token]


async def tokenize(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    body = parse_json(request, await request.read())
    if "messages" not in body and not isinstance(body.get("prompt"), str):
        # pydantic tries TokenizeCompletionRequest first; its error is the first reported.
        raise one_error(
            "missing", ("body", "prompt"), "Field required", f"<dict of {len(body)} items>"
        )
    check_model(body, beh)
    _learn(body, beh)
    ids = _token_ids(body)
    strs = [_token_str(t, beh) for t in ids] if body.get("return_token_strs") else None
    reply = {"count": len(ids), "max_model_len": beh.max_model_len, "tokens": ids}
    return json_response(reply | {"token_strs": strs})


async def detokenize(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    body = parse_json(request, await request.read())
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise one_error(
            "missing", ("body", "tokens"), "Field required", f"<dict of {len(body)} items>"
        )
    check_model(body, beh)
    for token in tokens:
        if token not in SPECIAL and token not in beh.vocabulary:
            # The renderer's validate_token_ids words it so; whether /detokenize passes a
            # parameter name, 0.32's source does not make clear: the fake names none.
            message = f"Token id {token} is out of vocabulary"
            raise ApiError(400, error_body(message))
    # Special tokens are skipped (skip_special_tokens), words joined by spaces.
    words = [beh.vocabulary[t] for t in tokens if t not in SPECIAL]
    return json_response({"prompt": " ".join(words)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
