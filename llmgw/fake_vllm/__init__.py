"""A fake vLLM OpenAI-compatible server: the only upstream stand-in for llmgw.

It owns vLLM's wire format as the gateway sees it, copied from vllm-project/vllm
(newest tree in the index, where ``vllm/entrypoints/*`` are shims to
``vllm/frontend/entrypoints/*``): ``entrypoints/openai/{chat_completion,completion}/
{serving,protocol}.py`` (bodies; chunks are ``model_dump_json(exclude_unset=True)``,
usage chunks add ``exclude_none``), ``entrypoints/generate/base/serving.py``
(``create_streaming_error_response``: ``json.dumps``, then ``[DONE]``),
``frontend/entrypoints/serve/exception_handling/{error_response,handlers/validation}.py``
and ``serve/engine/serving.py`` (error JSON, unknown-model 404, 400 "Bad Request" for
request validation), ``frontend/processing/renderers/params.py``, ``sampling_params.py``
and ``vllm/exceptions.py`` (length errors), ``entrypoints/serve/engine/protocol.py`` and
``frontend/entrypoints/openai/models/serving.py`` (model list; responses name the first
served model), ``frontend/entrypoints/pooling/embed/*``, ``serve/middleware/
x_request_id.py``, ``serve/instrumentator/health.py`` and ``vllm/v1/engine/async_llm.py``
("Aborted request(s) %s." when a client disconnects).

Those newer routes were read from the vLLM 0.32.0 source installed by scripts/vllm-env
(each module names its files). Token accounting is trivial so tests can predict it
(``count_prompt_tokens``, ``count_completion_tokens``); generated token ``i`` is
``" tok{i}"``.

The modules, each importing only those above it:

- ``tokens``: token accounting and embeddings, pure functions tests use to predict usage.
- ``token_ids``, ``kv_cache``, ``scheduler``, ``engine``: the simulated server
  (``FakeVLLMBehaviour.simulation``, ``--simulate``): prompts' token ids, vLLM's block
  pool and prefix cache, its continuous-batching scheduler with a step cost model, and
  the engine that runs it in real time.
- ``behaviour``: ``FakeVLLMBehaviour`` (the knobs and what the fake observed) and its app
  keys.
- ``errors``: vLLM's error shapes, and request validation in FastAPI's and vLLM's order.
- ``plan``: what a chat or completion request will produce, fixed once after validation.
- ``bodies``: response bodies and stream events in vLLM's field order.
- ``delivery``: pacing tokens and injecting failures, the same for every API.
- ``responses``: the Responses API (``/v1/responses``, retrieve, cancel, the store).
- ``anthropic``: Anthropic's Messages API (``/v1/messages``, ``count_tokens``).
- ``tokenizing``, ``pooling``, ``audio``: ``/tokenize`` and ``/detokenize``; rerank and
  score; audio transcriptions and translations (each module says what real vLLM needs).
- ``metrics``: ``/metrics``, the load signals in prometheus_client's text, as vLLM's.
- ``server``: chat, completions, embeddings, the middleware, ``create_fake_vllm_app``,
  ``FakeVLLM``.
- ``cli``: ``python -m llmgw.fake_vllm`` (``__main__`` only calls ``cli.main``).
"""

from __future__ import annotations

from .behaviour import (
    BEHAVIOUR_KEY,
    FAKE_VLLM_VERSION,
    FailMode,
    FakeVLLMBehaviour,
    RecordedRequest,
)
from .cli import main
from .engine import Engine, Generation
from .errors import error_body, streaming_error_event
from .scheduler import SchedulerStats, SimulationSettings
from .server import FakeVLLM, create_fake_vllm_app, embeddings, health, list_models, version
from .tokens import (
    BOS_TOKENS,
    CHAT_GENERATION_PROMPT_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    EMBEDDING_DIM,
    Kind,
    completion_text,
    count_completion_tokens,
    count_prompt_tokens,
    embedding_vector,
    prompt_token_counts,
    token_text,
)

__all__ = [
    "BEHAVIOUR_KEY",
    "BOS_TOKENS",
    "CHAT_GENERATION_PROMPT_TOKENS",
    "CHAT_TOKENS_PER_MESSAGE",
    "EMBEDDING_DIM",
    "FAKE_VLLM_VERSION",
    "Engine",
    "FailMode",
    "FakeVLLM",
    "FakeVLLMBehaviour",
    "Generation",
    "Kind",
    "RecordedRequest",
    "SchedulerStats",
    "SimulationSettings",
    "completion_text",
    "count_completion_tokens",
    "count_prompt_tokens",
    "create_fake_vllm_app",
    "embedding_vector",
    "embeddings",
    "error_body",
    "health",
    "list_models",
    "main",
    "prompt_token_counts",
    "streaming_error_event",
    "token_text",
    "version",
]
