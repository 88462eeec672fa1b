"""Two hundred requests at once over twenty keys, while admins change those keys: no key
is granted one request more than its tier allows, and the database is never "locked"."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import aiohttp
import orjson
import pytest

from llmgw.state import LEDGER

from ..conftest import GatewayFactory, auth, tiers
from .conftest import assert_settled

CHAT = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
)
KEYS, PER_KEY = 20, 10
# Half the keys are bound by their minute bucket, half by their hour bucket.
LIMITS = {"minutely": (4, 1000), "hourly": (1000, 7)}


async def test_concurrent_requests_never_exceed_a_keys_limit(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_factory(tiers=tiers(free=(10, 100), **LIMITS))
    keys = [
        await gateway.create_key(f"user{i}", tier="minutely" if i % 2 else "hourly")
        for i in range(KEYS)
    ]
    requests = [key for key in keys for _ in range(PER_KEY)]
    random.Random(8).shuffle(requests)
    url = f"{gateway.base_url}/chat/completions"

    async def one(session: aiohttp.ClientSession, key: dict[str, object]) -> tuple[int, int]:
        headers = auth(str(key["key"])) | {"Content-Type": "application/json"}
        async with session.post(url, data=CHAT, headers=headers) as resp:
            await resp.read()
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
            return int(str(key["id"])), resp.status

    async def admin_changes() -> None:
        # Every key's record changes while its requests are being served and logged.
        async with gateway.admin() as admin:
            for key in keys:
                await admin.update_key(int(str(key["id"])), {"description": "changed under load"})

    with caplog.at_level(logging.DEBUG):
        connector = aiohttp.TCPConnector(limit=0)  # all 200 at once: no client-side queue
        async with aiohttp.ClientSession(connector=connector) as session:
            results, _ = await asyncio.gather(
                asyncio.gather(*(one(session, key) for key in requests)), admin_changes()
            )

    granted = Counter(key_id for key_id, status in results if status == 200)
    refused = Counter(key_id for key_id, status in results if status == 429)
    assert sorted(set(status for _, status in results)) == [200, 429]
    for key in keys:
        limit = LIMITS[str(key["tier"])]
        allowed = min(limit)  # the tighter window decides a burst
        key_id = int(str(key["id"]))
        assert (granted[key_id], refused[key_id]) == (allowed, PER_KEY - allowed), key["tier"]
    rows = await assert_settled(gateway, rows=KEYS * PER_KEY)
    assert Counter(r["status_code"] for r in rows) == Counter(s for _, s in results)
    assert gateway.app[LEDGER].failed_writes == 0
    assert "database is locked" not in caplog.text
    async with gateway.admin() as admin:
        assert {k["description"] for k in await admin.list_keys()} == {"changed under load"}
