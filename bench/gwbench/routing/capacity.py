"""The fleet's capacity, from the simulator's parameters and the workload's mean request.

A simulated server works in steps: each step decodes one token for every running request
and prefills up to `max_num_batched_tokens` prompt tokens, and lasts
`decode_time_per_step` plus `prefill_time_per_token` for each prompt token it prefills.
A request of `P` prompt tokens, none found in the prefix cache, and `T` output tokens
therefore takes `P × prefill_time_per_token` of the server's time to prefill, plus its
share of the `T` decode steps it runs in, which it shares with up to `B` requests, `B`
being `max_num_seqs` or the requests whose `P + T` tokens fit in the KV cache at once,
whichever is smaller:

    busy seconds a request = P × t_prefill + T × t_step / B
    B = min(max_num_seqs, num_gpu_blocks × block_size / (P + T))
    capacity (requests/s) = servers / busy seconds a request

This is the fleet's *cache-blind* capacity: every prompt token prefilled, none reused.
A policy whose requests find their prefix cached needs less of the servers than this,
so at "90 %" it has headroom that a policy missing the cache does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fleet import Sim
from .workload import Mix


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float  # the fleet's
    busy_s: float  # server seconds a request
    batch: float  # B above
    prefill_s: float
    decode_s: float


def capacity(sim: Sim, servers: int, mix: Mix) -> Capacity:
    p, t = mix.prompt_tokens, mix.output_tokens
    batch = min(float(sim.max_num_seqs), sim.num_gpu_blocks * sim.block_size / (p + t))
    prefill, decode = p * sim.prefill, t * sim.step / batch
    busy = prefill + decode
    return Capacity(servers / busy, busy, batch, prefill, decode)
