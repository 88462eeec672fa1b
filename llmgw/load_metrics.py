"""vLLM's own load signals, read from an upstream's ``/metrics`` (Prometheus text).

Routing by these (issue 17) beats counting our own in-flight requests: vLLM knows what is
queued and how full its KV cache is, including work other gateways sent. A server that does
not expose them gets ``None`` from ``scrape``, and the caller falls back to in-flight counts.

The names are vLLM 0.32.0's, from ``PrometheusStatLogger`` in
``vllm/v1/metrics/loggers.py``: the gauges ``vllm:num_requests_waiting``,
``vllm:num_requests_running`` and ``vllm:kv_cache_usage_perc``, and the counters
``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` (in tokens), each labelled
``model_name`` and ``engine``. Earlier releases called the last three
``vllm:gpu_cache_usage_perc``, ``vllm:gpu_prefix_cache_queries`` and
``vllm:gpu_prefix_cache_hits``; 0.32.0 no longer has them, but an older upstream still
routes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .clock import Clock

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
PREFIX_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")

# Each field and the names it may come under, current name first.
_FIELDS: dict[str, tuple[str, ...]] = {
    "waiting": (WAITING,),
    "running": (RUNNING,),
    "kv_cache_usage": KV_CACHE_USAGE,
    "prefix_queries": PREFIX_QUERIES,
    "prefix_hits": PREFIX_HITS,
}
_FIELD_OF = {name: field for field, names in _FIELDS.items() for name in names}
# The lines of those families (samples, and their HELP and TYPE), as prefixes: vLLM's
# /metrics is some 50 KB of histograms, 15 ms for prometheus_client to parse whole (and
# a gateway reads each upstream's every second); these dozen lines, a fraction of one.
_OURS = tuple(f"{lead}{name}" for name in _FIELD_OF for lead in ("", "# HELP ", "# TYPE "))


@dataclass(frozen=True, slots=True)
class UpstreamLoad:
    """One model's load on one upstream; counts are summed over its engines (data-parallel
    ranks)."""

    waiting: int
    running: int
    kv_cache_usage: float  # 0..1, the fullest engine's: a request lands on one engine
    prefix_queries: int  # tokens looked up in the prefix cache, since the server started
    prefix_hits: int  # of those, tokens found cached
    scraped_at: float  # the clock's monotonic reading: how stale the numbers are


def parse_load(text: str, *, scraped_at: float = 0.0) -> dict[str, UpstreamLoad]:
    """The load of each model in ``text`` (Prometheus text format), by ``model_name``.

    A model appears only if all five signals are there for it: half a picture would rank
    an upstream against others on numbers it does not have. Only the five families'
    lines are read (the rest is not even parsed); ``ValueError`` when one of those is
    not in Prometheus' format.
    """
    # model -> field -> metric name -> engine -> value. Keyed by name so that a server
    # exposing both a current and a deprecated name is read once, by the current one.
    seen: defaultdict[str, defaultdict[str, dict[str, dict[str, float]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    ours = "\n".join(line for line in text.splitlines() if line.startswith(_OURS))
    for family in text_string_to_metric_families(ours):
        field = _FIELD_OF.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            # A counter family holds its `_total` sample; `_created` comes as a family
            # of its own, which _FIELD_OF does not know.
            if sample.name not in (family.name, family.name + "_total"):
                continue
            model = sample.labels.get("model_name")
            if model is None:
                continue
            by_engine = seen[model][field].setdefault(family.name, {})
            by_engine[sample.labels.get("engine", "")] = sample.value
    loads: dict[str, UpstreamLoad] = {}
    for model, fields in seen.items():
        values = _complete(fields)
        if values is None:
            continue
        loads[model] = UpstreamLoad(
            waiting=int(sum(values["waiting"])),
            running=int(sum(values["running"])),
            kv_cache_usage=max(values["kv_cache_usage"]),
            prefix_queries=int(sum(values["prefix_queries"])),
            prefix_hits=int(sum(values["prefix_hits"])),
            scraped_at=scraped_at,
        )
    return loads


def _complete(fields: Mapping[str, dict[str, dict[str, float]]]) -> dict[str, list[float]] | None:
    """Each field's per-engine values, under the first of its names present; None if a
    field has none."""
    complete: dict[str, list[float]] = {}
    for field, names in _FIELDS.items():
        by_name = fields.get(field, {})
        name = next((n for n in names if by_name.get(n)), None)
        if name is None:
            return None
        complete[field] = list(by_name[name].values())
    return complete


# ASYNC109: the prober calls this with its per-upstream budget; aiohttp's ClientTimeout
# bounds the request the same way asyncio.timeout would, and says so in aiohttp's errors.
async def scrape(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,  # noqa: ASYNC109
    clock: Clock,
) -> dict[str, UpstreamLoad] | None:
    """GET ``url`` (an upstream's ``/metrics``) and parse its load, by model.

    None when the server does not expose the signals: no such page, not Prometheus
    text, or none of the models complete. A connection failure or a timeout is not that
    (the upstream may be down, which is the prober's to say) and is raised.
    """
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        if resp.status != 200:
            return None
        text = await resp.text(errors="replace")
    try:
        loads = parse_load(text, scraped_at=clock.monotonic())
    except ValueError:
        return None
    return loads or None
