"""Issue 12, item 3: what a client sends cannot forge a log line.

A path with `%0a` in it (aiohttp decodes it into `request.path`; no key is needed for
a 404) or a `model` with a newline used to be written into the access line as is, so
a client could write whole lines of its own: a fake warning, an access line for
another user. Each line the gateway writes is one record, as text (`key=value`, a
value that is not a plain token quoted as a JSON string) and as JSON, and what the
client sent is recoverable from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmgw.admin_client import AdminClient
from llmgw.fake_vllm import FakeVLLM
from llmgw.logs import FLUSH_INTERVAL, JsonFormatter, TextFormatter

from ..conftest import Served
from .wire import Wire, request

STAMP = "2026-01-01T00:00:00.000Z"
FORGED_WARNING = f"\n{STAMP} WARNING llmgw: upstream http://gpu1:8100 is down: forged\n"
FORGED_ACCESS = (
    f"\n{STAMP} INFO    llmgw.access: request_id=forged method=POST "
    "path=/v1/chat/completions status=200 user=ceo model=fake-model prompt_tokens=9999\n"
)
# Line breaks of every kind a reader may split on, a terminal escape, a bidi override.
ODD = 'a\rb\x1b[2Jc\u2028d\u2029e\x85f\x0bg\x1ch\x7fi\u202ej"k=l\\m n\x00o'

LINE = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR|CRITICAL) +([\w.]+): (.*)"
)
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?: |$)')


def fields_of(text: str) -> dict[str, Any]:
    """The `key=value` pairs of an access line; the whole text must be made of them."""
    found: dict[str, Any] = {}
    position = 0
    while position < len(text):
        match = FIELD.match(text, position)
        assert match, f"not a key=value pair at {text[position:]!r}"
        key, value = match.groups()
        assert key not in found, text
        found[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    return found


def text_records(log: str) -> list[tuple[str, str, dict[str, Any] | str]]:
    """(level, logger, fields or message) of each line; every line must be one record."""
    records: list[tuple[str, str, dict[str, Any] | str]] = []
    for line in log.splitlines():  # (splits on \x85, \u2028, \x1c... too, as readers do)
        match = LINE.fullmatch(line)
        assert match, f"a line that is no record: {line!r}"
        _, level, logger, rest = match.groups()
        records.append((level, logger, fields_of(rest) if logger == "llmgw.access" else rest))
    return records


def json_records(log: str) -> list[tuple[str, str, dict[str, Any] | str]]:
    records: list[tuple[str, str, dict[str, Any] | str]] = []
    for line in log.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        logger = entry["logger"]
        records.append(
            (
                entry["level"].upper(),
                logger,
                entry if logger == "llmgw.access" else entry["message"],
            )
        )
    return records


async def wait_logged(log: Path, request_ids: list[str]) -> str:
    """The log once every request's access line is in it (bounded: lines are buffered
    for up to `FLUSH_INTERVAL`)."""
    async with asyncio.timeout(10):
        while not all(rid in (text := log.read_text(errors="strict")) for rid in request_ids):
            await asyncio.sleep(FLUSH_INTERVAL / 4)
    return text


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_what_a_client_sends_cannot_forge_a_log_line(
    tmp_path: Path, fake: FakeVLLM, log_format: str
) -> None:
    served = Served(tmp_path, fake.url, f'[logging]\nformat = "{log_format}"\n')
    await served.start()
    try:
        async with AdminClient(served.socket) as admin:
            key = (await admin.create_key("bob"))["key"]
        sent_paths = [
            "/v1/models" + FORGED_WARNING,
            "/v1/models" + FORGED_ACCESS,
            "/v1/" + ODD,
        ]
        models = ["fake-model" + FORGED_ACCESS, ODD]
        request_ids = []
        async with await Wire.open(served) as wire:
            for path in sent_paths:  # no key needed: a 404, logged
                target = urllib.parse.quote(path, safe="/")
                await wire.send(request(target, method="GET", body=b""))
                reply = await wire.reply()
                assert reply.status == 404, reply
                request_ids.append(reply.headers["x-request-id"])
            for model in models:
                body = orjson.dumps(
                    {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                )
                await wire.send(request(key=key, body=body))
                reply = await wire.reply()
                assert reply.status == 404, reply  # vLLM: no such model
                request_ids.append(reply.headers["x-request-id"])
        log = await wait_logged(served.log, request_ids)
    finally:
        await served.stop()

    records = text_records(log) if log_format == "text" else json_records(log)
    assert [r for r in records if r[0] != "INFO"] == []  # no forged warning
    access = [r[2] for r in records if r[1] == "llmgw.access"]
    assert all(isinstance(a, dict) for a in access)
    ours = [a for a in access if isinstance(a, dict) and a["path"] != "/health"]
    assert [a["request_id"] for a in ours] == request_ids  # one line each, none forged
    by_id = {a["request_id"]: a for a in ours}
    for request_id, path in zip(request_ids, sent_paths, strict=False):
        assert by_id[request_id]["path"] == path
        assert str(by_id[request_id]["status"]) == "404"
    for request_id, model in zip(request_ids[len(sent_paths) :], models, strict=True):
        assert by_id[request_id]["model"] == model
        assert by_id[request_id]["user"] == "bob"
    assert "forged" not in "".join(str(r[2]) for r in records if r[1] != "llmgw.access")


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("llmgw", logging.WARNING, __file__, 1, message, args, None)


def test_a_message_quoting_outside_text_stays_one_line() -> None:
    """A warning that quotes what an upstream or a peer said (an error's text) keeps it
    on its line: line breaks and other control characters are escaped."""
    said = "connection reset" + FORGED_WARNING.rstrip() + "\x1b[2J" + ODD
    line = TextFormatter().format(record("upstream %s is down: %s", "http://gpu1:8100", said))
    assert len(line.splitlines()) == 1, line
    assert LINE.fullmatch(line), line
    assert line.isprintable(), line
    assert "\\n" + STAMP in line  # escaped, still readable


def test_a_traceback_stays_multi_line() -> None:
    """The traceback is the gateway's own text: it keeps its lines."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = logging.LogRecord("llmgw", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = TextFormatter().format(entry).splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_a_json_line_is_one_line_for_any_reader() -> None:
    """orjson escapes C0 controls but writes U+2028, U+2029 and U+0085 as they are,
    which `str.splitlines()` (and JavaScript) read as line breaks."""
    entry = record("upstream %s is down: %s", "http://gpu1:8100", ODD)
    entry.fields = {"path": ODD}
    line = JsonFormatter().format(entry)
    assert len(line.splitlines()) == 1, line
    assert json.loads(line)["path"] == ODD
    assert json.loads(line)["message"] == f"upstream http://gpu1:8100 is down: {ODD}"
