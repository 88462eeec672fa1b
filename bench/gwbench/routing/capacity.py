"""The fleet's capacity, from the simulator's parameters and the workload's mean request.

The simulator's own estimate (`SimulationSettings.capacity` in
`llmgw/fake_vllm/scheduler.py`), times the servers. A server's step lasts
`decode_time_per_step` plus `prefill_time_per_token` for each prompt token it computes;
each step decodes one token for every running request. So a request of `P` prompt
tokens, `c` of them found cached, and `T` output tokens costs the server

    seconds a request = (P - c) × prefill_time_per_token + T × decode_time_per_step / B

`B` being `max_num_seqs`, or fewer when the KV cache cannot hold that many requests'
blocks at once (a 4,900-token request needs 310 of the 4,095 blocks: 13 fit). The
capacity in requests a second is `servers / seconds a request`.

The bench offers load relative to the *cache-blind* capacity, `c = 0`: what the fleet
can do when every prompt token is computed. It is the same for every policy, and a
policy whose requests find their prefix cached needs less of the servers than this, so
at "90 %" it has headroom that a policy missing the cache does not. The capacity with
every repeated token cached (the workload's `new_tokens` computed only) is reported
beside it, as the ceiling no router can pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmgw.fake_vllm.scheduler import SimulationSettings

from .fleet import Sim
from .workload import Mix


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float  # the fleet's, cache-blind
    ideal_requests_per_s: float  # the fleet's, every repeated prompt token cached


def settings(sim: Sim) -> SimulationSettings:
    return SimulationSettings(
        max_num_seqs=sim.max_num_seqs, num_gpu_blocks=sim.num_gpu_blocks,
        block_size=sim.block_size, max_num_batched_tokens=sim.max_num_batched_tokens,
        prefill_time_per_token=sim.prefill, decode_time_per_step=sim.step,
    )  # fmt: skip


def capacity(sim: Sim, servers: int, mix: Mix) -> Capacity:
    one = settings(sim)
    prompt, output = round(mix.prompt_tokens), round(mix.output_tokens)
    cached = 1.0 - mix.new_tokens / mix.prompt_tokens
    return Capacity(
        servers * one.capacity(prompt, 0.0, output),
        servers * one.capacity(prompt, cached, output),
    )
