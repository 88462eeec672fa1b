"""CPU per routing decision: the key of a request and the order of its upstreams.

For each llmgw policy, two figures over four upstreams:
- `key + order`: what the policy itself costs: `routing_key` of the parsed body (the
  prefix for prefix-affinity, the session for session, nothing for the others), then
  `policy(...).order` over four `Choice`s whose loads change between calls;
- `candidates`: the whole choice as the gateway makes it, `UpstreamPool.candidates`
  (healthy and full upstreams apart, each one's load, the key, the order).

The payload is a conversation of the prefix-heavy workload: a team's system prompt of
5,000 words, three earlier exchanges and a new message. CPU time
(`time.process_time`) over many decisions, best of three rounds. Prints one JSON
object: µs a decision by policy.

    python -m gwbench.routing.decision [--decisions N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from llmgw import routing
from llmgw.config import RoutingPolicyName, RoutingSettings, UpstreamSettings
from llmgw.load_metrics import UpstreamLoad
from llmgw.upstreams import UpstreamPool

from .workload import prompt, vocabulary

POLICIES: tuple[RoutingPolicyName, ...] = (
    "least-loaded",
    "prefix-affinity",
    "session",
    "round-robin",
)
UPSTREAMS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]  # names only, never contacted
MODEL = "m"
HEADERS = {"x-session-id": "user-001-c1", "Content-Type": "application/json"}


def payload(seed: int = 17) -> dict[str, Any]:
    rng = random.Random(seed)
    words = vocabulary(seed)
    messages = [{"role": "system", "content": prompt(rng, words, 5000)}]
    for _ in range(3):
        messages.append({"role": "user", "content": prompt(rng, words, 80)})
        messages.append({"role": "assistant", "content": prompt(rng, words, 100)})
    messages.append({"role": "user", "content": prompt(rng, words, 60)})
    return {"model": MODEL, "messages": messages, "stream": True, "max_tokens": 100, "user": "u1"}


def _loads() -> list[list[float]]:
    rng = random.Random(5)
    return [[float(rng.randint(0, 20)) for _ in UPSTREAMS] for _ in range(64)]


def best_of_three(decide: Callable[[int], object], decisions: int) -> float:
    """CPU µs a call of `decide`, best of three rounds."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for i in range(decisions):
            decide(i)
        best = min(best, time.process_time() - started)
    return best / decisions * 1e6


def key_and_order(name: RoutingPolicyName, body: dict[str, Any], decisions: int) -> float:
    policy = routing.policy(name, 4.0)
    choices = [
        [routing.Choice(u, x) for u, x in zip(UPSTREAMS, row, strict=True)] for row in _loads()
    ]

    def decide(i: int) -> object:
        return policy.order(choices[i & 63], routing.routing_key(name, HEADERS, body))

    return best_of_three(decide, decisions)


def candidates(name: RoutingPolicyName, body: dict[str, Any], decisions: int) -> float:
    pool = UpstreamPool(
        [UpstreamSettings(url=u, models=(MODEL,)) for u in UPSTREAMS],
        routing=RoutingSettings(policy=name),
    )
    # As a scrape leaves them; the loads change between decisions, outside the timing's
    # interest but inside its loop (a dict assignment an upstream).
    loads = [[{MODEL: UpstreamLoad(0, int(x), 0.5, 0, 0, 0.0)} for x in row] for row in _loads()]

    def decide(i: int) -> object:
        for upstream, load in zip(pool.upstreams, loads[i & 63], strict=True):
            upstream.loads = load
        return pool.candidates(MODEL, HEADERS, body)

    return best_of_three(decide, decisions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    body = payload()
    words = sum(len(m["content"].split()) for m in body["messages"])
    found = {
        name: {
            "key_and_order_us": key_and_order(name, body, args.decisions),
            "candidates_us": candidates(name, body, args.decisions),
        }
        for name in POLICIES
    }
    print(json.dumps({"policies": found, "payload_words": words, "upstreams": len(UPSTREAMS)}))


if __name__ == "__main__":
    main()
