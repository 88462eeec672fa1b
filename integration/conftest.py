"""The real vLLM for the integration suite: started once per session, in its own process
group (all of vLLM's processes stop together), from the environment `scripts/vllm-env`
set up. Without that environment the suite fails: it never skips."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, http, isolated  # noqa: F401  (fixtures, re-used)

MODEL_NAME = "tiny-llama"
READY_TIMEOUT = 300.0
# vLLM's own logging (VLLM_LOGGING_CONFIG_PATH replaces its default configuration), with
# one logger more at DEBUG: with --enable-log-requests, vLLM's RequestLogger then writes
# every request's body as vLLM parsed it ("Request ID JSON body: {...}", the fields the
# client set: `log_request_body` in vllm/entrypoints/serve/utils/request_logger.py, called
# from `_check_model` in vllm/entrypoints/serve/engine/serving.py). That line is the only
# place vLLM 0.32.0 shows a request's `priority`: neither the INFO line (its
# SamplingParams) nor /metrics carries it. Everything else stays at INFO.
_BODY_LOGGER = "vllm.entrypoints.serve.utils.request_logger"
_BODY_LINE = " JSON body: "
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(asctime)s %(name)s: %(message)s"}},
    "handlers": {
        "out": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "level": "DEBUG",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {
        "vllm": {"handlers": ["out"], "level": "INFO", "propagate": False},
        _BODY_LOGGER: {"level": "DEBUG"},
    },
}


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` with the tiny model, on loopback."""

    def __init__(self, python: str, model: str, log: Path) -> None:
        self.python = python
        self.model = model
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logging_config = self.log.with_name("logging.json")
        logging_config.write_text(json.dumps(LOGGING))
        env = os.environ | {
            "VLLM_LOGGING_CONFIG_PATH": str(logging_config),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # Responses are kept, so `GET /v1/responses/{id}` can be tried through the
            # gateway (vLLM keeps them in memory only with this).
            "VLLM_ENABLE_RESPONSES_API_STORE": "1",
        }
        command = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
            # Requests are scheduled by their `priority` (lower first; 0 when a request
            # has none, so requests without one are served as with fcfs): the gateway
            # sends its tier's to an upstream with priority_scheduling = true.
            "--scheduling-policy", "priority",
            # vLLM logs "Aborted request(s) …" only with this: the disconnect test reads it.
            "--enable-log-requests",
            # The gateway checks /health every 0.5 s: without this, those lines are all a
            # failing test's tail of the log would show.
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        # Its own process group (stopped as one), but the tests' session. In a session of
        # its own (start_new_session), Linux's scheduler autogroups put vLLM in a CPU
        # group apart from the tests, and on this 2-core machine vLLM CPU then sent a
        # 1900-token stream in one burst at its end in 8 runs of 10 (token by token in
        # 10 of 10 here): by the time a client could leave, nothing was left to abort.
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                pytest.fail(f"vLLM exited with {self._process.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp,  # noqa: S310
            ):
                if resp.status == 200:
                    return
            time.sleep(0.5)
        pytest.fail(f"vLLM was not ready within {READY_TIMEOUT:g} s:\n{self.tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def request_bodies(self) -> list[dict[str, Any]]:
        """Every request's body as vLLM parsed it (only the fields the client set), in
        the order vLLM received them."""
        return [
            json.loads(line.split(_BODY_LINE, 1)[1])
            for line in self.log_text().splitlines()
            if _BODY_LOGGER in line and _BODY_LINE in line
        ]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python, model = (
        os.environ.get("INTEGRATION_VLLM_PYTHON"),
        os.environ.get("INTEGRATION_VLLM_MODEL"),
    )
    if not python or not model:
        pytest.fail("No vLLM environment: run the integration suite with scripts/test-vllm.")
    server = VllmServer(python, model, tmp_path_factory.mktemp("vllm") / "vllm.log")
    started = time.monotonic()
    server.start()
    print(f"\nvLLM ready in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()
