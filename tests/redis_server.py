"""A real `redis-server` for the tests: a loopback port, a directory of its own, nothing
persisted. Stopped and started again on the same port, it is a Redis outage."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Production gives Redis 0.5 s to answer ([limits] redis_timeout) before deciding alone.
# A test machine running the suite on two busy cores can be slower than that now and
# then: tests that assert the replicas decided together give Redis this long.
PATIENT = 2.0

INSTALL = (
    "redis-server is not installed; the limits tests need it: "
    "apt-get install -y redis-server (scripts/test installs it on a fresh machine)"
)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory / "redis.log"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait (bounded) until it answers; fail the test loudly if it cannot
        (never a skip: a suite that skips its Redis tests proves nothing of them)."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail(INSTALL)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        return False

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")
