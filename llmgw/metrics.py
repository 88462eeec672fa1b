"""Counters for `/metrics` (Prometheus text format) and `/health`.

Plain integers bumped on the event loop; rendering walks them once per scrape.

Each upstream's load as vLLM last reported it (issue 17) is passed on by upstream and
model, for the upstreams whose `/metrics` were read: an upstream that does not expose
them, or could not be read, has no such series rather than zeros. vLLM's prefix-cache
counters stay counters (`_total`, as vLLM itself exposes them): they count up from the
server's start and begin again when it restarts, which is a counter reset that
`rate()` and `increase()` allow for; so `rate(hits) / rate(queries)` is the hit rate of
the last minutes, where the admin API's is the one since the server started.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .ledger import Ledger
from .limits import LimiterStatus
from .load_metrics import UpstreamLoad
from .upstreams import Upstream, UpstreamPool

# Families of vLLM's load, each sample labelled by upstream and model: (name, type, help,
# the value of one upstream's model).
_LOAD_FAMILIES: tuple[tuple[str, str, str, Callable[[Upstream, str, UpstreamLoad], float]], ...] = (
    (
        "llmgw_upstream_load",
        "gauge",
        "What routing compares: requests waiting and running in vLLM when last read, "
        "less this gateway's it counted, plus this gateway's open there now.",
        lambda upstream, model, _: upstream.load(model),
    ),
    (
        "llmgw_upstream_waiting",
        "gauge",
        "Requests waiting in vLLM's queue, as last read.",
        lambda _, __, load: load.waiting,
    ),
    (
        "llmgw_upstream_running",
        "gauge",
        "Requests vLLM is running, as last read.",
        lambda _, __, load: load.running,
    ),
    (
        "llmgw_upstream_kv_cache_usage",
        "gauge",
        "vLLM's KV-cache use, 0 to 1 (its fullest engine's), as last read.",
        lambda _, __, load: load.kv_cache_usage,
    ),
    (
        "llmgw_upstream_prefix_cache_queries_total",
        "counter",
        "Prompt tokens vLLM looked up in its prefix cache since it started, as last read.",
        lambda _, __, load: load.prefix_queries,
    ),
    (
        "llmgw_upstream_prefix_cache_hits_total",
        "counter",
        "Prompt tokens vLLM found in its prefix cache since it started, as last read.",
        lambda _, __, load: load.prefix_hits,
    ),
)


@dataclass(slots=True)
class Metrics:
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    in_flight: int = 0
    responses: Counter[int] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Requests refused by a limit, by the limit (the 429's `error.type`).
    refusals: Counter[str] = field(
        default_factory=lambda: Counter(
            dict.fromkeys(("requests", "tokens", "concurrency", "budget"), 0)
        )
    )

    def render(self, ledger: Ledger, pool: UpstreamPool, limits: LimiterStatus) -> str:
        lines = [
            "# HELP llmgw_requests_in_flight Requests being handled now.",
            "# TYPE llmgw_requests_in_flight gauge",
            f"llmgw_requests_in_flight {self.in_flight}",
            "# HELP llmgw_responses_total Responses by HTTP status (499: client went away).",
            "# TYPE llmgw_responses_total counter",
            *(
                f'llmgw_responses_total{{code="{code}"}} {count}'
                for code, count in sorted(self.responses.items())
            ),
            "# HELP llmgw_limit_refusals_total Requests refused by a limit of their key, by "
            "the limit.",
            "# TYPE llmgw_limit_refusals_total counter",
            *(
                f'llmgw_limit_refusals_total{{reason="{reason}"}} {count}'
                for reason, count in self.refusals.items()
            ),
            "# HELP llmgw_tokens_total Tokens recorded in the ledger.",
            "# TYPE llmgw_tokens_total counter",
            f'llmgw_tokens_total{{kind="prompt"}} {self.prompt_tokens}',
            f'llmgw_tokens_total{{kind="completion"}} {self.completion_tokens}',
            "# HELP llmgw_ledger_pending Usage records waiting for the database.",
            "# TYPE llmgw_ledger_pending gauge",
            f"llmgw_ledger_pending {ledger.pending}",
            "# HELP llmgw_ledger_written_total Usage records written.",
            "# TYPE llmgw_ledger_written_total counter",
            f"llmgw_ledger_written_total {ledger.written}",
            "# HELP llmgw_ledger_failed_writes_total Ledger writes the database refused (retried).",
            "# TYPE llmgw_ledger_failed_writes_total counter",
            f"llmgw_ledger_failed_writes_total {ledger.failed_writes}",
            "# HELP llmgw_ledger_dropped_total Usage records lost (buffer full or shutdown).",
            "# TYPE llmgw_ledger_dropped_total counter",
            f"llmgw_ledger_dropped_total {ledger.dropped}",
            "# HELP llmgw_ledger_rejected_total Usage records the database refused (set aside).",
            "# TYPE llmgw_ledger_rejected_total counter",
            f"llmgw_ledger_rejected_total {ledger.rejected}",
            "# HELP llmgw_limiter_local_decisions_total Admissions this replica decided alone "
            "because Redis could not be reached.",
            "# TYPE llmgw_limiter_local_decisions_total counter",
            f"llmgw_limiter_local_decisions_total {limits.local_decisions}",
            "# HELP llmgw_limiter_shared 1 while limits are counted in Redis with the other "
            "replicas.",
            "# TYPE llmgw_limiter_shared gauge",
            f'llmgw_limiter_shared{{backend="{limits.backend}"}} {int(limits.shared)}',
            "# HELP llmgw_upstream_healthy 1 when the upstream's last health check passed.",
            "# TYPE llmgw_upstream_healthy gauge",
            *(
                f'llmgw_upstream_healthy{{upstream="{_label(u.url)}"}} {int(u.healthy)}'
                for u in pool.upstreams
            ),
            "# HELP llmgw_upstream_in_flight Requests open to the upstream now.",
            "# TYPE llmgw_upstream_in_flight gauge",
            *(
                f'llmgw_upstream_in_flight{{upstream="{_label(u.url)}"}} {u.in_flight}'
                for u in pool.upstreams
            ),
            *_upstream_loads(pool),
        ]
        return "\n".join(lines) + "\n"


def _upstream_loads(pool: UpstreamPool) -> list[str]:
    """vLLM's load signals of each upstream whose /metrics were read, by model."""
    read = [
        (upstream, model, load)
        for upstream in pool.upstreams
        if upstream.loads
        for model, load in sorted(upstream.loads.items(), key=lambda item: item[0])
    ]
    lines: list[str] = []
    for name, kind, doc, value in _LOAD_FAMILIES:
        lines += (f"# HELP {name} {doc}", f"# TYPE {name} {kind}")
        lines += (
            f'{name}{{upstream="{_label(u.url)}",model="{_label(model)}"}} {value(u, model, load)}'
            for u, model, load in read
        )
    return lines


def _label(value: str) -> str:
    """A label value escaped as the text format wants: a model's name is what an upstream
    said it is, and may hold a quote, a backslash or a line break."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
