"""What a test controls and observes: the behaviour knobs, the recorded requests, and the
app key the handlers find them under. One ``FakeVLLMBehaviour`` per app, never a global,
so a test can run several fakes at once and flip each between requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from .engine import Engine
from .scheduler import SimulationSettings

FAKE_VLLM_VERSION = "0.32.0"

FailMode = Literal["reset", "stall", "error", "http_error"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any | None
    query: str = ""


@dataclass
class FakeVLLMBehaviour:
    """Knobs tests flip between requests, plus what the fake observed.

    ``fail`` and ``headers_delay`` apply to the inference routes (chat, completions,
    embeddings); ``/v1/models`` and ``/health`` keep answering so health checks pass.
    """

    models: list[str] = field(default_factory=lambda: ["fake-model"])
    max_model_len: int = 2048
    default_max_tokens: int = 16
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    headers_delay: float = 0.0
    fail: FailMode | None = None
    fail_after_tokens: int = 0
    http_error_status: int = 503
    http_error_retry_after: str | None = None
    http_error_times: int | None = None  # None: every request while fail == "http_error"
    # The http_error's body instead of vLLM's JSON: e.g. the HTML page of a proxy in front.
    http_error_body: bytes | None = None
    # Faults of a misbehaving upstream, for the gateway's defences (vLLM never does these):
    # usage fields reported instead of the true counts (in the body and the usage chunk),
    reported_usage: dict[str, Any] | None = None
    # the bytes of the error event `fail = "error"` sends mid-stream (default: vLLM's),
    error_event: bytes | None = None
    # a stream sent even for a request that did not ask for one,
    stream_regardless: bool = False
    # and this many tokens generated per choice whatever max_tokens says (None: obey it).
    ignore_max_tokens: int | None = None
    # While set to an Event not yet set, chat and completion requests wait for it before
    # anything else (counted in `generating`): a test holds requests open, then lets go.
    hold: asyncio.Event | None = None
    system_fingerprint: str | None = f"vllm-{FAKE_VLLM_VERSION}-fake0000"
    enable_request_id_headers: bool = False  # vLLM's --enable-request-id-headers
    # vLLM's VLLM_ENABLE_RESPONSES_API_STORE (off by default, as in vLLM): only then does a
    # Responses request with `store` (true unless the client says otherwise) keep its
    # response for GET /v1/responses/{id}; vLLM never forgets one, nor does the fake.
    enable_responses_store: bool = False
    stored_responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The words /tokenize has seen, in order: word i has token id WORD_IDS_FROM + i, so
    # /detokenize can give them back.
    vocabulary: dict[int, str] = field(default_factory=dict)  # /tokenize's words by id
    requests: list[RecordedRequest] = field(default_factory=list)
    started: int = 0
    finished: int = 0
    aborted: int = 0
    resets: int = 0
    open_streams: int = 0
    aborted_request_ids: list[str] = field(default_factory=list)
    # The `priority` of each generation request admitted (vLLM's default 0 when absent).
    priorities: list[int] = field(default_factory=list)
    # Generation requests being served now, and the most ever served at once.
    generating: int = 0
    most_generating: int = 0
    # Of those, the ones a `hold` keeps back: /metrics reports them as waiting, the rest
    # as running.
    held: int = 0
    # /metrics (vllm:kv_cache_usage_perc, 0..1, and the prefix cache's token counters);
    # serve_metrics False answers 404, like a server that does not expose them.
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    serve_metrics: bool = True
    # A simulated server (``engine``): chat and completion requests of one prompt are
    # scheduled, cached and timed by a model of vLLM's engine, and /metrics reports its
    # numbers instead of the knobs above. Read when the app is made (FakeVLLM.start).
    simulation: SimulationSettings | None = None

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_until(self, predicate: Callable[[], bool], seconds: float = 5.0) -> None:
        """Poll ``predicate`` until true; TimeoutError after ``seconds``."""
        async with asyncio.timeout(seconds):
            while not predicate():  # noqa: ASYNC110 -- predicates are arbitrary, so poll
                await asyncio.sleep(0.005)


BEHAVIOUR_KEY = web.AppKey("fake_vllm_behaviour", FakeVLLMBehaviour)
# Present only when the behaviour asks for a simulation.
ENGINE_KEY = web.AppKey("fake_vllm_engine", Engine)
