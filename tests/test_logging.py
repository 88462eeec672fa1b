"""One access-log line per request, as text or JSON, never with a secret in it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.config import LoggingSettings
from llmgw.logs import FLUSH_INTERVAL, configure_logging

from .conftest import Gateway


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "secret plans"}]}


async def make_requests(gateway: Gateway, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for body in ({**CHAT, "max_tokens": 2}, {**CHAT, "max_tokens": 2, "stream": True}):
            async with session.post(
                f"{gateway.base_url}/chat/completions", data=orjson.dumps(body), headers=headers
            ) as resp:
                await resp.read()
        async with session.get(
            f"{gateway.base_url}/models", headers={"Authorization": "Bearer sk-internal-wrong"}
        ) as resp:
            assert resp.status == 401
    await gateway.flush_ledger()


async def logged(log_file: Path, count: int) -> str:
    """The log once it holds `count` access lines: lines are buffered and reach the file
    within `FLUSH_INTERVAL` (bounded wait)."""
    async with asyncio.timeout(5):
        while (text := log_file.read_text()).count("llmgw.access") < count:
            await asyncio.sleep(FLUSH_INTERVAL / 4)
    return text


@pytest.mark.usefixtures("restore_logging")
async def test_json_access_log(gateway: Gateway, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "gateway.log"
    configure_logging(LoggingSettings(format="json", file=str(log_file)))
    created = await gateway.create_key("alice")
    await make_requests(gateway, created["key"])
    lines = [json.loads(line) for line in (await logged(log_file, 3)).splitlines()]
    access = [line for line in lines if line["logger"] == "llmgw.access"]
    assert [a["status"] for a in access] == [200, 200, 401]
    first = access[0]
    assert first["key_id"] == created["id"]
    assert first["key_prefix"] == created["key_prefix"]
    assert first["user"] == "alice"
    assert first["model"] == "fake-model"
    assert first["completion_tokens"] == 2
    assert first["request_id"]
    text = log_file.read_text()
    assert created["key"] not in text
    assert "sk-internal-wrong" not in text
    assert "secret plans" not in text  # never a prompt


@pytest.mark.usefixtures("restore_logging")
async def test_text_access_log(gateway: Gateway, tmp_path: Path) -> None:
    log_file = tmp_path / "gateway.log"
    configure_logging(LoggingSettings(file=str(log_file)))
    created = await gateway.create_key("bob")
    await make_requests(gateway, created["key"])
    access = [line for line in (await logged(log_file, 3)).splitlines() if "llmgw.access" in line]
    assert len(access) == 3
    assert f"key_id={created['id']}" in access[0]
    assert "user=bob" in access[0]
    assert "status=200" in access[0]
    assert "status=401" in access[2]
    assert created["key"] not in log_file.read_text()
