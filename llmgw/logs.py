"""Log set-up: one line per event to stderr or a file, as text or JSON.

Access lines carry their facts in `extra={"fields": {...}}`; the text format renders
them as `key=value`, the JSON format as object members, for log shippers. Both cut any
API key that reaches a line down to its display prefix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson

from .config import LoggingSettings
from .keys import redact_keys


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: "
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


def configure_logging(settings: LoggingSettings) -> None:
    handler: logging.Handler
    if settings.file:
        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # aiohttp's own access log would duplicate ours, without key or usage.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at debug level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
