"""``/tokenize`` and ``/detokenize`` as vLLM 0.32.0 answers them
(``vllm/entrypoints/serve/tokenize/{api_router,protocol,serving}.py``): bodies are
``model_dump()``, so ``token_strs`` is null unless asked for.

The ids follow the fake's counting rules exactly (``tokens``): a chat request is
``CHAT_TOKENS_PER_MESSAGE`` template tokens then its words per message, then
``CHAT_GENERATION_PROMPT_TOKENS`` (when ``add_generation_prompt``, the default); a prompt
is ``BOS_TOKENS`` (when ``add_special_tokens``, the default) then its words. Special tokens
have small fixed ids; each word gets the next free id the first time it is seen.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .behaviour import BEHAVIOUR_KEY, FakeVLLMBehaviour
from .delivery import injected_failure, json_response
from .errors import ApiError, check_model, error_body, one_error, parse_json
from .tokens import BOS_TOKENS, CHAT_GENERATION_PROMPT_TOKENS, CHAT_TOKENS_PER_MESSAGE

BOS_ID, TEMPLATE_ID, GENERATION_ID = 1, 2, 3
SPECIAL = {BOS_ID: "<s>", TEMPLATE_ID: "<|template|>", GENERATION_ID: "<|assistant|>"}
WORD_IDS_FROM = 1000


def _words(content: Any) -> list[str]:
    if isinstance(content, list):  # content parts: only text parts count (tokens._words)
        return [w for p in content if isinstance(p, dict) for w in _words(p.get("text"))]
    return content.split() if isinstance(content, str) else []


def _word_ids(words: list[str], beh: FakeVLLMBehaviour) -> list[int]:
    ids = []
    for word in words:
        if word not in beh.vocabulary:
            beh.vocabulary.append(word)
        ids.append(WORD_IDS_FROM + beh.vocabulary.index(word))
    return ids


def _token_ids(body: dict[str, Any], beh: FakeVLLMBehaviour) -> list[int]:
    if "messages" in body:  # TokenizeChatRequest: add_special_tokens defaults to False
        ids: list[int] = []
        for message in body["messages"]:
            ids += [TEMPLATE_ID] * CHAT_TOKENS_PER_MESSAGE
            content = message.get("content") if isinstance(message, dict) else None
            ids += _word_ids(_words(content), beh)
        if body.get("add_generation_prompt", True):
            ids += [GENERATION_ID] * CHAT_GENERATION_PROMPT_TOKENS
        return ids
    special = [BOS_ID] * BOS_TOKENS if body.get("add_special_tokens", True) else []
    return special + _word_ids(_words(body["prompt"]), beh)


def _token_str(token: int, beh: FakeVLLMBehaviour) -> str:
    return SPECIAL.get(token) or beh.vocabulary[token - WORD_IDS_FROM]


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
    ids = _token_ids(body, beh)
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
        if token not in SPECIAL and not 0 <= token - WORD_IDS_FROM < len(beh.vocabulary):
            # The renderer's validate_token_ids words it so; whether /detokenize passes a
            # parameter name, 0.32's source does not make clear: the fake names none.
            message = f"Token id {token} is out of vocabulary"
            raise ApiError(400, error_body(message))
    # Special tokens are skipped (skip_special_tokens), words joined by spaces.
    words = [beh.vocabulary[t - WORD_IDS_FROM] for t in tokens if t not in SPECIAL]
    return json_response({"prompt": " ".join(words)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
