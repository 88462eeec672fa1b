"""Rerank (``/rerank``, ``/v1/rerank``, ``/v2/rerank``) and score (``/score``,
``/v1/score``) as vLLM 0.32.0 answers them
(``vllm/entrypoints/pooling/scoring/{api_router,protocol,serving}.py``: ``RerankResponse``
and ``ScoreResponse`` are ``model_dump()``-ed; ids are ``score-`` plus the X-Request-Id or
the body's ``request_id``, else a random one; usage counts prompt tokens only).

Real vLLM serves these only for a cross-encoder or a classification model run with a
pooling runner (``--runner pooling``); the fake serves them beside its generation routes.
A query and document pair counts ``words(query) + words(document) +
SCORE_PAIR_SPECIAL_TOKENS`` tokens (a cross-encoder's [CLS] q [SEP] d [SEP]); the score is
the share of the document's distinct words that the query also has, so tests can order
results.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .behaviour import BEHAVIOUR_KEY
from .delivery import injected_failure, json_response
from .errors import check_model, one_error, parse_json
from .responses import random_uuid
from .tokens import SCORE_PAIR_SPECIAL_TOKENS

# ScoreRequest's variants, in the order pydantic tries them.
_SCORE_PAIRS: tuple[tuple[str, str], ...] = (
    ("queries", "documents"),
    ("queries", "items"),
    ("data_1", "data_2"),
    ("text_1", "text_2"),
)


def pair_tokens(query: str, document: str) -> int:
    return len(query.split()) + len(document.split()) + SCORE_PAIR_SPECIAL_TOKENS


def relevance(query: str, document: str) -> float:
    words = set(document.lower().split())
    return len(words & set(query.lower().split())) / len(words) if words else 0.0


def _texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item if isinstance(item, str) else "" for item in items]


def _pairs(queries: list[str], documents: list[str]) -> list[tuple[str, str]]:
    if len(queries) == 1:  # one query against every document
        return [(queries[0], d) for d in documents]
    if len(queries) != len(documents):
        raise one_error(
            "value_error", ("body",), "Value error, Input lengths must be either 1:1, 1:N or N:N",
            f"<dict of {len(queries) + len(documents)} items>",
        )  # fmt: skip
    return list(zip(queries, documents, strict=True))


def _request_id(request: web.Request, body: dict[str, Any]) -> str:
    base = request.headers.get("X-Request-Id") or body.get("request_id") or random_uuid()
    return f"score-{base}"


async def rerank(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    body = parse_json(request, await request.read())
    for key in ("query", "documents"):
        if key not in body:
            msg, summary = "Field required", f"<dict of {len(body)} items>"
            raise one_error("missing", ("body", key), msg, summary)
    check_model(body, beh)
    query, documents = _texts(body["query"])[0], _texts(body["documents"])
    scores = [relevance(query, d) for d in documents]
    order = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)  # stable
    results = [
        {"index": i, "document": {"text": documents[i], "multi_modal": None}}
        | {"relevance_score": scores[i]}
        for i in order
    ]
    top_n = body.get("top_n") or len(documents)
    tokens = sum(pair_tokens(query, d) for d in documents)
    head = {"id": _request_id(request, body), "model": beh.models[0]}
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response(head | {"usage": usage, "results": results[:top_n]})


async def score(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    body = parse_json(request, await request.read())
    names = next((p for p in _SCORE_PAIRS if p[0] in body and p[1] in body), None)
    if names is None:
        msg, summary = "Field required", f"<dict of {len(body)} items>"
        raise one_error("missing", ("body", "queries"), msg, summary)
    check_model(body, beh)
    pairs = _pairs(_texts(body[names[0]]), _texts(body[names[1]]))
    data = [
        {"index": i, "object": "score", "score": relevance(q, d)} for i, (q, d) in enumerate(pairs)
    ]
    tokens = sum(pair_tokens(q, d) for q, d in pairs)
    head = {"id": _request_id(request, body), "object": "list", "created": int(time.time())}
    usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    usage["completion_tokens"] = 0
    usage |= {"prompt_tokens_details": None, "completion_tokens_details": None}
    return json_response(head | {"model": beh.models[0], "data": data, "usage": usage})


def add_routes(app: web.Application) -> None:
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.router.add_post(path, rerank)
    for path in ("/score", "/v1/score"):
        app.router.add_post(path, score)
