"""Log set-up: one line per event to stderr or a file, as text or JSON.

Access lines carry their facts in `extra={"fields": {...}}`; the text format renders
them as `key=value`, the JSON format as object members, for log shippers. Both cut any
API key that reaches a line down to its display prefix.

A line is one record and stays one, whatever a client or an upstream put in it (a
path, a model name, an error's text):

- Text, fields: a value that is a plain token (printable in `str.isprintable`'s sense,
  so no control character, line or paragraph separator or bidi override, and no space,
  `"`, `=` or `\\`) is written bare, `user=alice`; any other value, the empty one
  included, as an ASCII-only JSON string, `path="/v1/x\\n2026-..."`, which
  `json.loads` turns back into the value sent.
- Text, the message of any other line: control characters (C0, DEL, C1), U+2028,
  U+2029 and bidi overrides are escaped (`\\n`, `\\x1b`, `\\u2028`). The traceback
  that may follow is the gateway's own text and keeps its lines.
- JSON: orjson escapes C0 controls; DEL, C1, U+2028, U+2029 and bidi overrides, which
  some readers take for line breaks or display reordered, are escaped too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .config import LoggingSettings
from .keys import redact_keys

# How long a line may wait in the buffer before it reaches the file (see LineHandler).
FLUSH_INTERVAL = 0.2

_NOT_BARE = re.compile(r'[ "=\\]').search
# What may break a line or fool a terminal, beyond what `str.isprintable` already
# refuses to call plain; lone surrogates would not even encode.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def field_value(value: object) -> str:
    """A field's value as the text format writes it: bare if a plain token, else quoted."""
    text = str(value)
    if text and text.isprintable() and _NOT_BARE(text) is None:
        return text
    return json.dumps(text)  # ASCII only: every control and separator escaped


def one_line(text: str) -> str:
    """`text` with anything that could break its line or fool a terminal escaped."""
    if text.isprintable():  # the common case: no regex
        return text
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


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
            line += " ".join(f"{k}={field_value(v)}" for k, v in fields.items() if v is not None)
        else:
            line += one_line(record.getMessage())
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
        try:
            line = orjson.dumps(entry, default=str).decode()
        except TypeError:  # a lone surrogate, which orjson refuses: json escapes it
            line = json.dumps(entry, default=str)
        if not line.isprintable():  # (outside strings, the line is plain ASCII)
            line = _UNSAFE.sub(_json_escape, line)
        return redact_keys(line)


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
