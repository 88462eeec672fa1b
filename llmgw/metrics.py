"""Counters for `/metrics` (Prometheus text format) and `/health`.

Plain integers bumped on the event loop; rendering walks them once per scrape.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .ledger import Ledger
from .limits import LimiterStatus
from .upstreams import UpstreamPool


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
                f'llmgw_upstream_healthy{{upstream="{u.url}"}} {int(u.healthy)}'
                for u in pool.upstreams
            ),
            "# HELP llmgw_upstream_in_flight Requests open to the upstream now.",
            "# TYPE llmgw_upstream_in_flight gauge",
            *(
                f'llmgw_upstream_in_flight{{upstream="{u.url}"}} {u.in_flight}'
                for u in pool.upstreams
            ),
        ]
        return "\n".join(lines) + "\n"
