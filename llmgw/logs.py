"""Log set-up: one line per event to stderr or a file, as text or JSON.

Access lines carry their facts in `extra={"fields": {...}}`; the text format renders
them as `key=value`, the JSON format as object members, for log shippers. Both cut any
API key that reaches a line down to its display prefix.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .config import LoggingSettings
from .keys import redact_keys

# How long a line may wait in the buffer before it reaches the file (see LineHandler).
FLUSH_INTERVAL = 0.2


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        # One access line per request: the date is formatted once a second, not per line.
        # (Handlers format under their lock, so this cache is never raced.)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = f"{self._stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: "
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        else:
            line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_keys(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "fields", None) or {}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_keys(orjson.dumps(entry, default=str).decode())


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line to a buffered stream and leaves the flushing to `flush_logs`,
    called every `FLUSH_INTERVAL` while the gateway runs, and at exit; a warning or
    worse is flushed at once. An access line per request would otherwise cost a system
    call per request; this way a burst of them costs one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            self.flush()
            self.stream.close()  # a file of its own, or a stderr wrapper that keeps fd 2 open
        finally:
            self.release()
            super().close()


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def _private(path: str, flags: int) -> int:
    """A log file is created 0600: lines name users, keys' prefixes and models."""
    return os.open(path, flags, 0o600)


def configure_logging(settings: LoggingSettings) -> None:
    # (stderr is line-buffered: a stream of its own on the same descriptor is not.)
    target: str | int = settings.file or sys.stderr.fileno()
    if settings.file:
        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
    stream = open(  # noqa: SIM115 - the handler owns it, and closes it
        target,
        "a",
        encoding="utf-8",
        buffering=1 << 16,
        closefd=bool(settings.file),
        opener=_private,  # (not used for stderr's descriptor)
    )
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    # The formatters use neither the caller's source line nor the thread and process:
    # collecting them costs every line (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # aiohttp's own access log would duplicate ours, without key or usage.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at debug level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
