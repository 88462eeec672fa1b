"""The load generators, run on the load core and bounded in time and in requests.

`wrk` posts a small chat completion (`post.lua`) over keep-alive connections and
writes its figures as JSON; `gwbench.stream_client` runs chat streams in Python.
Both are child processes of the bench, so the Meter counts their CPU once they end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import LOAD_CORE

LUA = Path(__file__).with_name("post.lua")
BENCH_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Wrk:
    binary: str

    def post(
        self,
        url: str,
        *,
        key: str,
        model: str,
        connections: int,
        seconds: float,
        max_requests: int,
    ) -> dict[str, Any]:
        """POST for `seconds` (at most `max_requests`); wrk's summary, rates added."""
        with tempfile.NamedTemporaryFile(suffix=".json") as summary:
            env = {
                **os.environ,
                "BENCH_KEY": key,
                "BENCH_MODEL": model,
                "BENCH_MAX_REQUESTS": str(max_requests),
                "BENCH_SUMMARY": summary.name,
            }
            argv = [
                "taskset", "-c", str(LOAD_CORE), self.binary, "-t1", f"-c{connections}",
                f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(LUA),
                url.rstrip("/") + "/v1/chat/completions",
            ]  # fmt: skip
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
            figures: dict[str, Any] = json.loads(Path(summary.name).read_text())
        seconds_run = figures["duration_us"] / 1e6
        errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
        figures |= {"seconds": seconds_run, "errors": errors}
        figures["rps"] = figures["requests"] / seconds_run if seconds_run else 0.0
        # At the cap wrk stops sending but still reports the whole duration.
        figures["capped"] = figures["requests"] >= max_requests * 0.99
        return figures


def streams(
    url: str,
    *,
    key: str,
    model: str,
    concurrency: int,
    count: int,
    seconds: float,
    tokens: int = 64,
    ramp: float = 0.0,
    on_tick: Any = None,
) -> dict[str, Any]:
    """Run `gwbench.stream_client`; `on_tick()` is called every 0.25 s while it runs."""
    argv = [
        "taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "gwbench.stream_client", url,
        "--model", model, "--concurrency", str(concurrency), "--count", str(count),
        "--seconds", str(seconds), "--tokens", str(tokens), "--ramp", str(ramp),
    ]  # fmt: skip
    env = {**os.environ, "BENCH_KEY": key, "PYTHONPATH": str(BENCH_DIR)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        client = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + seconds + 60  # its own grace is 30 s
        try:
            while client.poll() is None:
                if time.monotonic() > deadline:
                    client.kill()
                    raise RuntimeError("stream client did not finish in time")
                if on_tick is not None:
                    on_tick()
                time.sleep(0.25)
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()
        out.seek(0)
        err.seek(0)
        if client.returncode != 0:
            raise RuntimeError(f"stream client failed: {err.read().decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.read())
    return result
