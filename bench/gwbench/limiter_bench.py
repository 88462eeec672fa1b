"""The rate limiter on its own: decisions a second over many keys.

`llmgw.limits.MemoryLimiter.acquire` in a tight loop over `--keys` keys with a tier
whose limits are never reached, bounded in calls and seconds; then the same with
`Decision.headers()`, which the request path also calls for every request. Each is
run three times, in turn, and the best run is kept.

Prints one JSON object.  python -m gwbench.limiter_bench [--keys 10000] [--calls 2000000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from llmgw.limits import MemoryLimiter, RequestLimits


def rate(calls: int, seconds: float, keys: int, headers: bool) -> dict[str, Any]:
    limiter = MemoryLimiter()
    limits = RequestLimits(per_minute=10**9, per_hour=10**9)
    acquire = limiter.acquire
    done, began = 0, time.perf_counter()
    deadline = began + seconds
    while done < calls and time.perf_counter() < deadline:
        for i in range(done, min(done + 10_000, calls)):  # check the clock every 10,000
            decision = acquire(i % keys, limits)
            if headers:
                decision.headers()
        done = min(done + 10_000, calls)
    elapsed = time.perf_counter() - began
    return {"decisions": done, "seconds": elapsed, "per_s": done / elapsed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=2_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    # Best of three short runs each, taken in turn: the figure least bent by other jobs.
    runs: dict[str, list[dict[str, Any]]] = {"acquire": [], "with_headers": []}
    for _ in range(3):
        for name in runs:
            runs[name].append(
                rate(args.calls // 3, args.seconds / 6, args.keys, headers=name != "acquire")
            )
    result = {"keys": args.keys, **{n: max(r, key=lambda x: x["per_s"]) for n, r in runs.items()}}
    print(orjson.dumps(result).decode(), flush=True)
