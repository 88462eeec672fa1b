"""CPU per routing decision: the key of a request and the order of its upstreams.

For each llmgw policy, what the gateway runs per request to choose: `prefix_key` of the
parsed body (`session_key` for `session`), then `policy(...).order` over four upstreams
with made-up loads that change between calls. The payload is a conversation of the
prefix-heavy workload: a team's system prompt of about 5,000 words, three earlier
exchanges and a new message. CPU time (`time.process_time`) over many decisions, best of
three rounds. Prints one JSON object: µs a decision by policy.

    python -m gwbench.routing.decision [--decisions N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from llmgw import routing

from .workload import prompt, vocabulary

POLICIES: tuple[routing.PolicyName, ...] = (
    "least-loaded",
    "prefix-affinity",
    "session",
    "round-robin",
)
UPSTREAMS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]  # names only, never contacted


def payload(seed: int = 17) -> dict[str, Any]:
    rng = random.Random(seed)
    words = vocabulary(seed)
    messages = [{"role": "system", "content": prompt(rng, words, 5000)}]
    for _ in range(3):
        messages.append({"role": "user", "content": prompt(rng, words, 80)})
        messages.append({"role": "assistant", "content": prompt(rng, words, 100)})
    messages.append({"role": "user", "content": prompt(rng, words, 60)})
    return {"model": "m", "messages": messages, "stream": True, "max_tokens": 100, "user": "u1"}


def measure(name: routing.PolicyName, body: dict[str, Any], decisions: int) -> float:
    """CPU µs a decision, best of three rounds."""
    policy = routing.policy(name, 4.0)
    headers = {"x-session-id": "user-001-c1"}
    loads = [
        [
            routing.Choice(u, float(random.Random(i * 7 + j).randint(0, 20)))
            for j, u in enumerate(UPSTREAMS)
        ]
        for i in range(64)
    ]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for i in range(decisions):
            if name == "session":
                key = routing.session_key(headers, body)
            else:
                key = routing.prefix_key(body)
            policy.order(loads[i & 63], key)
        best = min(best, time.process_time() - started)
    return best / decisions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    body = payload()
    words = sum(len(m["content"].split()) for m in body["messages"])
    found = {name: measure(name, body, args.decisions) for name in POLICIES}
    print(json.dumps({"us_per_decision": found, "payload_words": words, "upstreams": 4}))


if __name__ == "__main__":
    main()
