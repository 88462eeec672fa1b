"""The servers of one routing run: four simulated vLLMs and the router under test.

The simulated servers (`python -m llmgw.fake_vllm --simulate`) run on the load core, the
router (llmgw or vllm-router) alone on the gateway core. Every run starts them afresh, so
no run inherits another's prefix caches.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import servers
from ..procs import GATEWAY_CORE, LOAD_CORE, Proc, Processes, free_port
from ..servers import Server, wait_ready

MODEL = "sim-model"


@dataclass(frozen=True)
class Sim:
    """The simulated server's parameters (the fake's command-line flags)."""

    max_num_seqs: int = 16
    num_gpu_blocks: int = 4096
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    prefill_time_per_token: float = 0.0001
    decode_time_per_step: float = 0.02
    max_model_len: int = 32768
    speedup: float = 1.0  # both times divided by this

    @property
    def prefill(self) -> float:
        return self.prefill_time_per_token / self.speedup

    @property
    def step(self) -> float:
        return self.decode_time_per_step / self.speedup

    def argv(self) -> list[str]:
        return [
            "--max-model-len", str(self.max_model_len), "--simulate",
            "--max-num-seqs", str(self.max_num_seqs),
            "--num-gpu-blocks", str(self.num_gpu_blocks), "--block-size", str(self.block_size),
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--prefill-time-per-token", repr(self.prefill),
            "--decode-time-per-step", repr(self.step),
        ]  # fmt: skip


def fleet(procs: Processes, sim: Sim, count: int, tag: str) -> list[Server]:
    """`count` simulated servers, started together, each on a free port."""
    started: list[tuple[Proc, str]] = []
    for i in range(count):
        port = free_port()
        argv = [
            sys.executable, "-m", "llmgw.fake_vllm", "--port", str(port), "--model", MODEL,
            *sim.argv(),
        ]  # fmt: skip
        proc = procs.start(f"{tag}-sim{i}", argv, core=LOAD_CORE, env={"PYTHONUNBUFFERED": "1"})
        started.append((proc, f"http://127.0.0.1:{port}"))
    fleet = []
    for proc, url in started:
        wait_ready(proc, url + "/health", 20)
        fleet.append(Server(proc.name, proc, url))
    return fleet


def llmgw(procs: Processes, upstreams: list[Server], policy: str, tag: str) -> Server:
    """`llmgw serve` routing over `upstreams` by `policy`, as `bench/run` runs it: a key
    whose tier allows 10^9 requests a minute, the in-memory limiter, the ledger on."""
    routing = ["[routing]", f'policy = "{policy}"']
    # Stopped after every run: no load balancer to see it leave, so no drain delay.
    return servers.llmgw(procs, {MODEL: upstreams}, name=tag, extra=routing, drain_delay=0)


def vllm_router(
    procs: Processes, executable: Path, upstreams: list[Server], policy: str, tag: str
) -> Server:
    """vLLM's router with `policy`, its other settings as shipped except the ports (its
    Prometheus exporter would take 29000) and the quieter log."""
    port, metrics_port = free_port(), free_port()
    argv = [
        str(executable), "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *(s.url for s in upstreams), "--policy", policy,
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--worker-startup-check-interval", "1", "--log-level", "warning",
    ]  # fmt: skip
    proc = procs.start(tag, argv, core=GATEWAY_CORE)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 60)
    return Server(tag, proc, url)


def chat_requests(log: Path) -> int:
    """Chat completions a simulated server answered, from its access log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return text.count('"POST /v1/chat/completions HTTP')
