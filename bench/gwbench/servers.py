"""The servers of a bench run, each on a free loopback port, each stopped with the run.

Upstreams (on the load core): nginx answering a static OpenAI chat completion, the
non-streaming ceiling; fake vLLMs for streams, instant and paced. Under test (on the
gateway core): the bare aiohttp pass-through proxy, llmgw with its whole request path,
and the LiteLLM proxy. nginx runs with its own prefix, configuration, pid and logs in the
run's temporary directory, never the system's.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .procs import GATEWAY_CORE, LOAD_CORE, Proc, Processes, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STATIC_MODEL = "bench-model"  # served by nginx
INSTANT_MODEL = "fake-instant"  # fake vLLM, no delays
PACED_MODEL = "fake-paced"  # fake vLLM, ~50 ms to the first token, 10 ms a token
HOLD_MODEL = "fake-hold"  # fake vLLM, slow enough to hold 1,000 streams open at once
STREAM_TOKENS = 64
_GATEWAY_ENV = (
    "LLMGW_",
    "RATE_LIMIT_",
    "VLLM_BASE_URL",
    "DATABASE_URL",
    "GATEWAY_PORT",
    "ADMIN_SECRET_KEY",
)

# What nginx answers: a chat completion as vLLM sends one (usage included).
STATIC_REPLY = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000000000",
        "object": "chat.completion",
        "created": 1767225600,
        "model": STATIC_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "tool_calls": []},
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 14, "total_tokens": 17, "completion_tokens": 3},
        "prompt_logprobs": None,
    },
    separators=(",", ":"),
)
MODELS_REPLY = json.dumps(
    {"object": "list", "data": [{"id": STATIC_MODEL, "object": "model", "owned_by": "vllm"}]},
    separators=(",", ":"),
)


@dataclass
class Server:
    name: str
    proc: Proc
    url: str  # base URL, without /v1
    key: str = ""  # what the load sends as a bearer token


def wait_ready(proc: Proc, url: str, seconds: float, statuses: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers one of `statuses`; fail early if the process died."""
    deadline = time.monotonic() + seconds
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:  # loopback only
                if reply.status in statuses:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in statuses:
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready after {seconds:g} s:\n{proc.log_tail()}")
        time.sleep(0.2)


def nginx(procs: Processes, binary: str) -> Server:
    work = procs.workdir / "nginx"
    work.mkdir(exist_ok=True)
    port = free_port()
    temp = " ".join(
        f"{kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health {{ return 200 ""; }}
        location = /v1/models {{ default_type application/json; return 200 '{MODELS_REPLY}'; }}
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{STATIC_REPLY}';
        }}
    }}
}}
"""
    )
    argv = [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    proc = procs.start("nginx", argv, core=LOAD_CORE)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 10)
    return Server("nginx", proc, url)


def fake_vllm(
    procs: Processes, model: str, *, first_token_delay: float = 0.0, token_delay: float = 0.0
) -> Server:
    port = free_port()
    argv = [
        sys.executable, "-m", "llmgw.fake_vllm", "--port", str(port), "--model", model,
        "--tokens", str(STREAM_TOKENS), "--first-token-delay", str(first_token_delay),
        "--token-delay", str(token_delay),
    ]  # fmt: skip
    proc = procs.start(model, argv, core=LOAD_CORE, env={"PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 20)
    return Server(model, proc, url)


def bare_proxy(procs: Processes, upstream: Server) -> Server:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("bare_proxy.py")), str(port), upstream.url]
    proc = procs.start(f"bare-{upstream.name}", argv, core=GATEWAY_CORE)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 20)
    return Server(f"bare→{upstream.name}", proc, url)


# Issue 15's limits, every one on and none reached: tokens per minute and day, requests
# in flight (the bench has at most 1,000 at once), a key budget and (`llmgw user budget`)
# a user budget.
EVERY_LIMIT = [
    "tokens_per_minute = 1000000000000", "tokens_per_day = 1000000000000",
    "max_in_flight = 100000", "budget_tokens = 1000000000000000", 'budget_period = "month"',
]  # fmt: skip
USER_BUDGET = ["--tokens", "1000000000000000", "--period", "month"]


def llmgw(
    procs: Processes,
    upstreams: Mapping[str, Server | Sequence[Server]],
    name: str = "llmgw",
    limits: str = "requests",
    extra: Sequence[str] = (),
    drain_delay: float | None = None,
) -> Server:
    """llmgw with its whole path: a key of a tier with huge limits, the ledger on.
    `upstreams`: by model, one server or several; `limits`: `requests` (requests per
    minute and hour only) or `every` (`EVERY_LIMIT` and a user budget too); `extra`:
    more lines of configuration (a `[routing]` section); `drain_delay`: seconds it still
    serves after SIGTERM (llmgw's default, 5, when None)."""
    work = procs.workdir / name
    work.mkdir(exist_ok=True)
    port = free_port()
    socket = work / "admin.sock"
    lines = [
        "[server]", 'host = "127.0.0.1"', f"port = {port}",
        *([f"shutdown_drain_delay = {drain_delay}"] if drain_delay is not None else []),
        "[admin]", f'socket = "{socket}"', 'default_tier = "bench"',
        "[database]", f'path = "{work / "llmgw.db"}"',
        "[tiers.bench]", "requests_per_minute = 1000000000", "requests_per_hour = 1000000000",
    ]  # fmt: skip
    if limits == "every":
        lines += EVERY_LIMIT
    lines += extra
    for model, servers in upstreams.items():
        for server in [servers] if isinstance(servers, Server) else servers:
            lines += ["[[upstreams]]", f'url = "{server.url}"', f'models = ["{model}"]']
    config = work / "llmgw.toml"
    config.write_text("\n".join(lines) + "\n")
    argv = [str(VENV_BIN / "llmgw"), "serve", "--config", str(config)]
    # The caller's LLMGW_* and seed variables would override the file: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GATEWAY_ENV)}
    proc = procs.start(name, argv, core=GATEWAY_CORE, env=env, inherit_env=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 30)
    add = [
        str(VENV_BIN / "llmgw"), "--socket", str(socket), "key", "add",
        "--user", "bench", "--tier", "bench", "--json",
    ]  # fmt: skip
    created = subprocess.run(add, capture_output=True, text=True, check=True, timeout=30)
    if limits == "every":
        budget = [str(VENV_BIN / "llmgw"), "--socket", str(socket), "user", "budget", "bench"]
        subprocess.run(budget + USER_BUDGET, capture_output=True, check=True, timeout=30)
    return Server(name, proc, url, json.loads(created.stdout)["key"])


def litellm(procs: Processes, executable: Path, upstreams: dict[str, Server]) -> Server:
    """The LiteLLM proxy: one worker, master key only, no database, offline."""
    work = procs.workdir / "litellm"
    work.mkdir(exist_ok=True)
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(8)
    models = "".join(
        f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
        f"      api_base: {server.url}/v1\n      api_key: none\n"
        for model, server in upstreams.items()
    )
    config = work / "config.yaml"
    config.write_text(
        f"model_list:\n{models}"
        "litellm_settings:\n  disable_hf_tokenizer_download: true\n  telemetry: false\n"
        f"general_settings:\n  master_key: {key}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # no database
    env |= {
        "HF_HUB_OFFLINE": "1",  # or it stalls trying to reach the internet
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the same: no download at import
        "LITELLM_LOG": "ERROR",
        "HOME": str(work),  # keeps its caches out of the user's home
        "PATH": f"{executable.parent}:{os.environ.get('PATH', '')}",
    }
    argv = [
        str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    proc = procs.start("litellm", argv, core=GATEWAY_CORE, env=env, inherit_env=False, cwd=work)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health/liveliness", 180)
    return Server("litellm", proc, url, key)
