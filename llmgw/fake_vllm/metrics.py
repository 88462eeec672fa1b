"""``/metrics`` as vLLM 0.32.0 serves it, with the load signals the gateway routes by.

What answers vLLM's ``/metrics`` is prometheus-fastapi-instrumentator's ``expose`` route
(``vllm/entrypoints/serve/instrumentator/metrics.py`` adds it before the
``make_asgi_app`` mount): prometheus_client's ``generate_latest`` whatever the ``Accept``
header says, under ``CONTENT_TYPE_LATEST``. The fake writes it with the same library
rather than by hand. The five families and their help
texts are ``PrometheusStatLogger``'s (``vllm/v1/metrics/loggers.py``), labelled
``model_name`` then ``engine`` (its ``labelnames``) for the first served model on engine
0. Counters come with their ``_created`` series, as prometheus_client writes them by
default. Only these five of vLLM's many families are served: nothing else reads more.

Waiting requests are those a ``hold`` keeps back (not yet scheduled); running ones are
the rest being generated. KV-cache usage and the prefix-cache counters are knobs. A
simulated server (``behaviour.simulation``) reports its engine's numbers instead: its
queue, its batch, the share of KV blocks requests hold, and the prompt tokens looked up
in and found in its prefix cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .behaviour import BEHAVIOUR_KEY, ENGINE_KEY, FakeVLLMBehaviour
from .engine import Engine

_LABELS = ["model_name", "engine"]
# When the counters were made: vLLM makes them as its server starts.
_CREATED_KEY = web.AppKey("fake_vllm_metrics_created", float)


class _Collector:
    """Reads the behaviour afresh at every scrape, as vLLM's gauges are its latest stats."""

    def __init__(self, beh: FakeVLLMBehaviour, engine: Engine | None, created: float) -> None:
        self._beh = beh
        self._engine = engine
        self._created = created

    def collect(self) -> Iterator[Metric]:
        beh = self._beh
        labels = [beh.models[0], "0"]
        running, waiting, usage = beh.generating - beh.held, beh.held, beh.kv_cache_usage
        queries, hits = beh.prefix_cache_queries, beh.prefix_cache_hits
        if self._engine is not None:
            stats = self._engine.stats()
            running, waiting, usage = stats.running, stats.waiting, stats.kv_cache_usage
            queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        gauges = [
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                waiting,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                usage,
            ),
        ]
        for name, documentation, value in gauges:
            gauge = GaugeMetricFamily(name, documentation, labels=_LABELS)
            gauge.add_metric(labels, value)
            yield gauge
        counters = [
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                hits,
            ),
        ]
        for name, documentation, count in counters:
            counter = CounterMetricFamily(name, documentation, labels=_LABELS)
            counter.add_metric(labels, count, created=self._created)
            yield counter


async def metrics(request: web.Request) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    if not beh.serve_metrics:  # a server started without metrics: FastAPI's 404
        raise web.HTTPNotFound
    registry = CollectorRegistry(auto_describe=False)
    engine = request.app.get(ENGINE_KEY)
    registry.register(_Collector(beh, engine, request.app[_CREATED_KEY]))
    # The content type carries its charset, which aiohttp's content_type= would refuse.
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app[_CREATED_KEY] = time.time()
    app.router.add_get("/metrics", metrics)
