"""The command line, ``python -m llmgw.fake_vllm``: serve one fake until SIGTERM or SIGINT.

It lives here rather than in ``__main__`` so the package can re-export ``main`` without
importing ``__main__`` twice when run with ``-m``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .behaviour import FakeVLLMBehaviour
from .server import FakeVLLM


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
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeVLLM(FakeVLLMBehaviour(models=args.models or ["fake-model"]))
    fake.behaviour.max_model_len, fake.behaviour.default_max_tokens = (
        args.max_model_len,
        args.tokens,
    )
    fake.behaviour.first_token_delay = args.first_token_delay
    fake.behaviour.token_delay = args.token_delay
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
