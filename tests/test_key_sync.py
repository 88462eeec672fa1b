"""Key changes reach every replica: two gateways on one PostgreSQL database, a change
made through the first honoured by the second within a second (NOTIFY on commit), or
within a key_sync_interval when the notification is lost; and on SQLite the catch-up
read back by the one process is harmless.

Whether a gateway knows a key is probed with a chat completion for a model no upstream
serves: 404 (answered after authentication, before admission, with the key's limit
headers, and costing nothing), or 401 for a key it refuses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from llmgw.app import create_app
from llmgw.config import ConfigError, DatabaseSettings, load_settings
from llmgw.state import KEY_SYNC, KEYS

from .conftest import Gateway, GatewayFactory, auth, make_settings, wait_for
from .databases import Database, PostgresDatabase

PROBE = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
# How soon a change must be honoured by the other replica.
WITHIN = 1.0

on_postgres = pytest.mark.parametrize("database", ["postgres"], indirect=True)

Probe = tuple[int, CIMultiDictProxy[str]]


async def probe(http: aiohttp.ClientSession, gateway: Gateway, key: str) -> Probe:
    async with http.post(
        f"{gateway.base_url}/chat/completions", json=PROBE, headers=auth(key)
    ) as resp:
        await resp.read()
        return resp.status, resp.headers


async def until(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    key: str,
    holds: Callable[[Probe], bool],
    what: str,
    seconds: float = 10,
) -> float:
    """Probe until `holds` (bounded by `seconds`); how long it took, printed (-s)."""
    start = time.monotonic()
    while not holds(answer := await probe(http, gateway, key)):
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not after {seconds} s (last answer {answer[0]})")
    took = time.monotonic() - start
    print(f"{what}: {took * 1000:.1f} ms")
    return took


def known(answer: Probe) -> bool:
    return answer[0] == 404


def refused(answer: Probe) -> bool:
    return answer[0] == 401


async def replicas(
    gateway_factory: GatewayFactory, database: Database, tmp_path: Path, interval: float = 5.0
) -> tuple[Gateway, Gateway]:
    """Two gateways on `database`, each with an admin socket of its own."""
    assert isinstance(database, PostgresDatabase)
    started = []
    for n in (1, 2):
        admin = dataclasses.replace(
            load_settings(None).admin,
            socket=str(tmp_path / "run" / f"admin{n}.sock"),
            secret_key="replicas-share-this",
        )
        db = DatabaseSettings(url=database.url, flush_interval=0.01, key_sync_interval=interval)
        started.append(await gateway_factory(admin=admin, database=db))
    return started[0], started[1]


async def health(http: aiohttp.ClientSession, gateway: Gateway) -> dict[str, Any]:
    async with http.get(f"{gateway.url}/health") as resp:
        body: dict[str, Any] = await resp.json()
        return body


@on_postgres
async def test_each_key_change_through_one_replica_reaches_the_other_within_a_second(
    gateway_factory: GatewayFactory,
    database: Database,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    one, two = await replicas(gateway_factory, database, tmp_path)
    await wait_for(lambda: two.app[KEY_SYNC].status()["listening"])
    took: dict[str, float] = {}
    async with one.admin() as admin:
        created = await admin.create_key("alice", tier="free")
        key, key_id = created["key"], created["id"]
        took["create"] = await until(http, two, key, known, "created on 1, known on 2")
        _, headers = await probe(http, two, key)
        assert headers["x-ratelimit-limit-requests"] == "10"  # free: 10 a minute

        await admin.update_key(key_id, {"tier": "premium"})
        took["update"] = await until(
            http,
            two,
            key,
            lambda a: a[1].get("x-ratelimit-limit-requests") == "100",
            "tier changed on 1, limits follow on 2",
        )

        await admin.revoke_key(key_id)
        took["revoke"] = await until(http, two, key, refused, "revoked on 1, refused on 2")
        await admin.update_key(key_id, {"is_active": True})
        await until(http, two, key, known, "enabled again on 1, known on 2")

        rotated = (await admin.rotate_key(key_id))["key"]
        took["rotate"] = await until(http, two, rotated, known, "rotated on 1, new known on 2")
        assert refused(await probe(http, two, key))  # the old secret is gone with it

        await admin.delete_key(key_id)
        took["delete"] = await until(http, two, rotated, refused, "deleted on 1, refused on 2")
    assert two.app[KEYS].get(key_id) is None
    assert max(took.values()) < WITHIN, took
    report = await health(http, two)
    assert report["status"] == "ok"
    assert report["keys"]["count"] == 0
    assert report["keys"]["listening"] is True
    assert report["keys"]["version"] == 6  # create, update, revoke, enable, rotate, delete
    assert report["keys"]["error"] is None


@on_postgres
async def test_a_lost_notification_is_caught_up_within_the_interval(
    gateway_factory: GatewayFactory,
    database: Database,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """A change committed without a NOTIFY (as one sent while a replica was not
    listening would be lost) is read by every replica at its next catch-up."""
    one, two = await replicas(gateway_factory, database, tmp_path, interval=0.3)
    created = await one.create_key("bob", tier="premium")
    key = created["key"]
    await until(http, two, key, known, "created on 1, known on 2")
    await database.execute(
        "WITH revoked AS (UPDATE api_keys SET is_active = FALSE WHERE id = ? RETURNING id)"
        " INSERT INTO key_changes (key_id, changed_at)"
        " SELECT id, '2030-01-01T00:00:00.000Z' FROM revoked",
        created["id"],
    )
    for gateway in (one, two):  # neither heard of it
        took = await until(http, gateway, key, refused, "changed unheard, caught up", seconds=3)
        assert took < 3 * 0.3


@on_postgres
async def test_a_cut_listener_connection_is_made_again_and_meanwhile_changes_still_arrive(
    gateway_factory: GatewayFactory,
    database: Database,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    one, two = await replicas(gateway_factory, database, tmp_path, interval=0.5)
    await wait_for(lambda: two.app[KEY_SYNC].status()["listening"])
    await database.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'llmgw key listener' AND datname = current_database()"
    )
    await wait_for(lambda: not two.app[KEY_SYNC].status()["listening"], seconds=5)
    report = await health(http, two)
    assert report["keys"]["listening"] is False
    assert report["status"] == "ok"  # the catch-up goes on: nothing is lost
    key = (await one.create_key("carol"))["key"]
    await until(http, two, key, known, "created on 1 while 2 was not listening", seconds=5)
    await wait_for(lambda: two.app[KEY_SYNC].status()["listening"], seconds=5)


async def test_on_sqlite_the_catch_up_reads_back_the_own_changes_harmlessly(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    sync = gateway.app[KEY_SYNC]
    first = await gateway.create_key("dave", tier="premium")
    second = await gateway.create_key("erin")
    for _ in range(2):  # twice: the second reads nothing
        await sync.catch_up()
        assert sync.status() | {"synced_s_ago": 0} == {
            "count": 2, "version": 2, "synced_s_ago": 0, "listening": False, "error": None,
        }  # fmt: skip
    assert known(await probe(http, gateway, first["key"]))
    async with gateway.admin() as admin:
        await admin.delete_key(second["id"])
        await admin.revoke_key(first["id"])
    await sync.catch_up()
    assert sync.status()["count"] == 1
    assert sync.status()["version"] == 4
    assert refused(await probe(http, gateway, first["key"]))
    assert refused(await probe(http, gateway, second["key"]))
    assert (await health(http, gateway))["status"] == "ok"


async def test_postgresql_without_a_token_secret_is_refused_at_start(fake_url: str) -> None:
    settings = make_settings(fake_url)
    settings = dataclasses.replace(
        settings, database=DatabaseSettings(url="postgresql://llmgw@db.internal/llmgw")
    )
    with pytest.raises(ConfigError, match=r"\[admin\] secret_key: required with a PostgreSQL"):
        create_app(settings)
    with pytest.raises(ConfigError, match="ADMIN_SECRET_KEY"):
        create_app(settings)


@pytest.fixture
def fake_url() -> str:
    return "http://127.0.0.1:9"  # never asked: the app is only made, not started
