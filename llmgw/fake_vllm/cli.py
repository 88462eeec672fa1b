"""The command line, ``python -m llmgw.fake_vllm``: serve one fake until SIGTERM or SIGINT.

It lives here rather than in ``__main__`` so the package can re-export ``main`` without
importing ``__main__`` twice when run with ``-m``.

``--simulate`` serves a simulated vLLM (``scheduler``, ``engine``): chat and completion
requests are batched, prefix-cached and timed by a model of vLLM's engine, and /metrics
reports its queue, batch, KV-cache usage and prefix-cache counters. Its settings, and
their defaults (``SimulationSettings``)::

    --max-num-seqs 16               sequences running at once
    --num-gpu-blocks 4096           KV-cache blocks (block 0 is vLLM's null block)
    --block-size 16                 tokens per block
    --max-num-batched-tokens 2048   tokens computed per step (decodes count too)
    --prefill-time-per-token 0.0001 seconds per uncached prompt token computed
    --decode-time-per-step 0.02     seconds every step costs
    --decode-time-per-seq 0         seconds more per sequence decoding in a step

e.g. ``python -m llmgw.fake_vllm --port 8101 --model m --max-model-len 32768 --simulate
--tokens 64``. The delays (``--token-delay``, ``--first-token-delay``) then apply only to
what the simulation does not serve (the Responses and Messages APIs).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal

from .behaviour import FakeVLLMBehaviour
from .scheduler import SimulationSettings
from .server import FakeVLLM

# Each simulation flag: its type and help; the default is SimulationSettings'.
_SIMULATION_FLAGS = {
    "max_num_seqs": (int, "most sequences running at once"),
    "num_gpu_blocks": (int, "KV-cache blocks, block 0 being vLLM's null block"),
    "block_size": (int, "tokens per KV-cache block"),
    "max_num_batched_tokens": (int, "token budget per step; each decode takes one"),
    "prefill_time_per_token": (float, "seconds per uncached prompt token computed"),
    "decode_time_per_step": (float, "seconds every step (forward pass) costs"),
    "decode_time_per_seq": (float, "seconds more per sequence decoding in a step"),
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmgw.fake_vllm",
        description="A fake vLLM OpenAI-compatible server: the only upstream stand-in for llmgw.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME")
    parser.add_argument("--tokens", type=int, default=16, help="default completion length")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    sim = parser.add_argument_group(
        "simulation",
        "--simulate: batch, cache and time chat and completion requests as vLLM's engine "
        "would (the settings below need it)",
    )
    sim.add_argument("--simulate", action="store_true", help="serve a simulated vLLM")
    defaults = SimulationSettings()
    for name, (kind, text) in _SIMULATION_FLAGS.items():
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        sim.add_argument(flag, type=kind, default=None, help=f"{text} (default {default})")
    args = parser.parse_args(argv)
    given = {name: getattr(args, name) for name in _SIMULATION_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if given and not args.simulate:
        parser.error("the simulation settings need --simulate")
    args.simulation = None
    if args.simulate:
        try:
            args.simulation = dataclasses.replace(defaults, **given)
            args.simulation.check_model_len(args.max_model_len)
        except ValueError as exc:
            parser.error(str(exc))
    return args


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeVLLM(FakeVLLMBehaviour(models=args.models or ["fake-model"]))
    fake.behaviour.max_model_len, fake.behaviour.default_max_tokens = (
        args.max_model_len,
        args.tokens,
    )
    fake.behaviour.first_token_delay = args.first_token_delay
    fake.behaviour.token_delay = args.token_delay
    fake.behaviour.simulation = args.simulation
    await fake.start(args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(_parse_args(argv)))
