"""Three `llmgw serve` processes on one Redis and one PostgreSQL database, exact together.

A key's limit is granted once across the replicas, not once each (its minute and its
hour window); a tier raised on one replica mid-burst never hands back used requests; and
with Redis restarted, PostgreSQL restarted or a replica SIGKILLed under load, every
answer a client received has exactly one ledger row (SIGKILL: but for the victim's last
flush interval). Run with `-s` for the figures.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.api_types import CreatedKey
from llmgw.fake_vllm import FakeVLLM

from ..conftest import Served, run_llmgw
from ..postgres import Cluster
from ..redis_server import RedisServer
from ..replicas import CHAT, Answer, Load, Replicas, burst, steady_load, tier_tables

AT_ONCE = 300
LIMIT = 10
FLUSH_INTERVAL = 0.25  # the ledger's default, which the replicas run with
LOAD = (1_000_000, 10_000_000)  # a tier that never refuses


@pytest.fixture
async def pg_url(postgres_cluster: Cluster) -> AsyncIterator[str]:
    """A database of this test's own on the session's PostgreSQL server."""
    name = f"llmgw_replicas_{uuid.uuid4().hex[:12]}"
    yield await postgres_cluster.create_database(name)
    await postgres_cluster.drop_database(name)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own on its own port, to stop and start again."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


ReplicaFactory = Callable[..., Replicas]


@pytest.fixture
async def replicas(tmp_path: Path, fake: FakeVLLM) -> AsyncIterator[ReplicaFactory]:
    """Make (not start) three replicas; every one made is stopped at the end."""
    made: list[Replicas] = []

    def make(*, database_url: str, redis_url: str, **tiers: tuple[int, int]) -> Replicas:
        group = Replicas(
            tmp_path / f"group{len(made)}",
            fake.url,
            database_url=database_url,
            redis_url=redis_url,
            tiers=tier_tables(**tiers),
        )
        made.append(group)
        return group

    yield make
    for group in made:
        await group.stop()


async def start_with_keys(group: Replicas, tier: str, count: int) -> list[CreatedKey]:
    keys: list[CreatedKey] = []

    async def make_keys() -> None:
        keys.extend([await group.create_key(tier) for _ in range(count)])

    await group.start(make_keys)
    return keys


async def assert_shared_throughout(group: Replicas) -> None:
    """No replica decided alone: had a Redis call timed out on a busy machine, a count
    off by some would read as that, not as a broken limiter."""
    for health in await group.health():
        assert health["limits"] == {
            "backend": "redis",
            "shared": True,
            "error": None,
            "local_decisions": 0,
        }


def assert_refused_in_openai_shape(answer: Answer, window: str) -> None:
    error = orjson.loads(answer.body)["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert error["message"].startswith(f"Rate limit reached for requests per {window}")
    assert int(answer.headers["Retry-After"]) >= 1


def assert_one_row_per_answer(answers: list[Answer], rows: list[dict[str, Any]]) -> None:
    """Every answer the clients received has exactly one ledger row, of its status, and
    the ledger has nothing else."""
    ids = [a.request_id for a in answers]
    assert len(set(ids)) == len(ids), "a request id given twice"
    assert len(rows) == len({r["request_id"] for r in rows}), "a ledger row written twice"
    received = {a.request_id: a.status for a in answers}
    logged = {r["request_id"]: r["status_code"] for r in rows}
    assert logged == received


@pytest.mark.parametrize(
    ("window", "tier"),
    [("minute", (LIMIT, 1000)), ("hour", (1000, LIMIT))],
    ids=["per-minute", "per-hour"],
)
async def test_three_replicas_grant_a_burst_exactly_the_limit(
    replicas: ReplicaFactory, pg_url: str, redis_url: str, window: str, tier: tuple[int, int]
) -> None:
    """300 requests at once, round-robin over the three, twice (a fresh key each, both
    made before replicas 2 and 3 start): exactly 10 answered 200, 290 a 429 naming the
    window, and one ledger row in PostgreSQL per request id the clients received."""
    group = replicas(database_url=pg_url, redis_url=redis_url, limited=tier)
    keys = await start_with_keys(group, "limited", 2)
    for run, key in enumerate(keys, 1):
        began = time.monotonic()
        answers = await burst(group.all, key["key"], AT_ONCE)
        took = time.monotonic() - began
        await group.settled()
        await assert_shared_throughout(group)
        granted = Counter(a.replica for a in answers if a.status == 200)
        print(
            f"\n{window} burst {run}: {AT_ONCE} requests in {took:.2f} s, "
            f"{sum(granted.values())} granted (by replica: "
            f"{[granted[i] for i in range(len(group.all))]})"
        )
        assert Counter(a.status for a in answers) == {200: LIMIT, 429: AT_ONCE - LIMIT}
        for answer in answers:
            if answer.status == 429:
                assert_refused_in_openai_shape(answer, window)
        rows = await group.ledger(key["id"])
        assert len(rows) == AT_ONCE
        assert_one_row_per_answer(answers, rows)


async def test_a_tier_raised_mid_burst_never_gives_back_used_requests(
    replicas: ReplicaFactory, pg_url: str, redis_url: str
) -> None:
    group = replicas(database_url=pg_url, redis_url=redis_url, free=(10, 1000), more=(20, 1000))
    [key] = await start_with_keys(group, "free", 1)
    load, stop = Load(), asyncio.Event()
    began = time.monotonic()
    workers = await steady_load(group.all, key["key"], load, stop)
    try:
        async with asyncio.timeout(20):
            while sum(a.status == 200 for a in load.answers) < LIMIT:
                await asyncio.sleep(0.01)
        changed = await run_llmgw(
            "--socket", str(group.first.socket), "key", "update", str(key["id"]), "--tier", "more"
        )
        assert changed.code == 0, changed.stderr
        updated = time.monotonic()
        await asyncio.sleep(2)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    span = time.monotonic() - began
    await group.settled()
    await assert_shared_throughout(group)
    admitted = sum(a.status == 200 for a in load.answers)

    # The bounds, from the limiter's semantics (memory.py's resize, buckets.lua): a
    # bucket starts full (10 tokens), a refused request takes nothing, and a tier change
    # keeps the tokens the key has used (tokens = min(tokens, new capacity)): a raise
    # adds no tokens at once, only a faster refill and a higher ceiling. Replica 1 knows
    # the new tier at once, the others within a key sync (well under a second), so the
    # key's buckets in Redis refill at 20/minute or 10/minute, whichever replica wrote
    # them last: never faster than 20/minute over the whole span. So at least the first 10 are
    # admitted, and at most 10 plus what 20/minute refills in the span the test measured
    # (Redis's clock can only see a shorter one). A raise that handed out the new tier's
    # whole 20 again would admit 10 more than that.
    most = LIMIT + math.floor(span * 20 / 60)
    print(
        f"\ntier raised mid-burst: {len(load.answers)} requests in {span:.2f} s, "
        f"{admitted} admitted (bounds {LIMIT}..{most}); served by replica: "
        f"{load.served_by(len(group.all))}"
    )
    assert LIMIT <= admitted <= most
    assert load.unanswered == []
    # Replica 1 counts the key at 20 a minute from the change on; the others once the
    # change has reached them (key sync: within a second; the last second of the load).
    after = [a for a in load.answers if a.sent > updated]
    assert after
    assert {a.headers["X-RateLimit-Limit-Minute"] for a in after if a.replica == 0} == {"20"}
    settled = [a for a in after if a.sent > updated + 1.0]
    limits = {(a.replica, a.headers["X-RateLimit-Limit-Minute"]) for a in settled}
    assert limits == {(0, "20"), (1, "20"), (2, "20")}
    assert_one_row_per_answer(load.answers, await group.ledger(key["id"]))


async def test_a_key_revoked_through_one_replica_is_refused_by_the_others_within_a_second(
    replicas: ReplicaFactory, pg_url: str, redis_url: str
) -> None:
    group = replicas(database_url=pg_url, redis_url=redis_url, free=(1000, 10000))
    [key] = await start_with_keys(group, "free", 1)
    headers = {"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"}

    async def status(served: Served, session: aiohttp.ClientSession) -> int:
        url = f"{served.url}/v1/chat/completions"
        async with session.post(url, data=CHAT, headers=headers) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as session:
        assert [await status(s, session) for s in group.all] == [200, 200, 200]
        revoked = await run_llmgw(
            "--socket", str(group.first.socket), "key", "revoke", str(key["id"])
        )
        assert revoked.code == 0, revoked.stderr
        began = time.monotonic()
        took: dict[int, float] = {}
        async with asyncio.timeout(1.0):  # the bound: within a second
            while len(took) < 2:
                for n, served in enumerate(group.all[1:], 2):
                    if n not in took and await status(served, session) == 401:
                        took[n] = time.monotonic() - began
                await asyncio.sleep(0.005)
        assert await status(group.first, session) == 401  # at once where it was made
    print(
        "\nrevoked through replica 1, refused by "
        + ", ".join(f"replica {n} after {ms * 1000:.0f} ms" for n, ms in sorted(took.items()))
    )
    await group.settled()


async def test_redis_restarted_under_load_the_replicas_serve_on_alone(
    replicas: ReplicaFactory, pg_url: str, own_redis: RedisServer
) -> None:
    group = replicas(database_url=pg_url, redis_url=own_redis.url, load=LOAD)
    [key] = await start_with_keys(group, "load", 1)
    load, stop = Load(), asyncio.Event()
    workers = await steady_load(group.all, key["key"], load, stop)
    try:
        await asyncio.sleep(1)
        stopped = time.monotonic()
        await asyncio.to_thread(own_redis.stop)
        noticed = await group.until("degraded")
        before_down = len(load.answers)
        await asyncio.sleep(1)
        served_alone = len(load.answers) - before_down
        await asyncio.to_thread(own_redis.start)  # the same port, empty
        back = await group.until("ok")
        down = time.monotonic() - stopped
        await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    await group.settled()
    alone = [h["limits"]["local_decisions"] for h in await group.health()]
    print(
        f"\nRedis restarted under load: down {down:.2f} s (every replica degraded "
        f"{noticed:.2f} s after the stop, ok {back:.2f} s after the start); "
        f"{len(load.answers)} answered, {served_alone} in the second while down; "
        f"by replica {load.served_by(len(group.all))}; decided alone by replica {alone}"
    )
    assert load.unanswered == []
    assert {a.status for a in load.answers} == {200}
    assert served_alone > 0
    assert all(n > 0 for n in alone)
    for health in await group.health():
        assert health["limits"]["shared"] is True
    assert_one_row_per_answer(load.answers, await group.ledger(key["id"]))


async def test_postgresql_restarted_under_load_the_ledger_writes_each_row_once(
    replicas: ReplicaFactory, own_cluster: Cluster, redis_url: str
) -> None:
    url = await own_cluster.create_database("llmgw")
    group = replicas(database_url=url, redis_url=redis_url, load=LOAD)
    [key] = await start_with_keys(group, "load", 1)
    load, stop = Load(), asyncio.Event()
    workers = await steady_load(group.all, key["key"], load, stop)
    try:
        await asyncio.sleep(1)
        stopped = time.monotonic()
        await own_cluster.stop_async()  # pg_ctl stop -m fast: every session cut off
        noticed = await group.until("degraded")  # the store's watcher looks every second
        before_down = len(load.answers)
        await asyncio.sleep(1)
        served_down = len(load.answers) - before_down
        held = [h["ledger"]["pending"] for h in await group.health()]
        await own_cluster.start_async()
        back = await group.until("ok")
        down = time.monotonic() - stopped
        await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    await group.settled()
    print(
        f"\nPostgreSQL restarted under load: down {down:.2f} s (every replica degraded "
        f"{noticed:.2f} s after the stop, ok {back:.2f} s after the start); "
        f"{len(load.answers)} answered, {served_down} in the second while down; rows held "
        f"by replica {held}; by replica {load.served_by(len(group.all))}"
    )
    assert load.unanswered == []
    assert {a.status for a in load.answers} == {200}
    assert served_down > 0
    assert all(n > 0 for n in held)
    assert_one_row_per_answer(load.answers, await group.ledger(key["id"]))


async def test_a_replica_sigkilled_under_load_loses_at_most_its_last_flush(
    replicas: ReplicaFactory, pg_url: str, redis_url: str
) -> None:
    group = replicas(database_url=pg_url, redis_url=redis_url, load=LOAD)
    [key] = await start_with_keys(group, "load", 1)
    victim = group.all[2]
    load, stop = Load(), asyncio.Event()
    workers = await steady_load(group.all, key["key"], load, stop)
    try:
        await asyncio.sleep(2)  # load across several flushes
        victim.process.kill()  # SIGKILL
        killed = time.monotonic()
        await victim.process.wait()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    await group.settled()  # the two left

    rows = await group.ledger(key["id"])
    written = [r["request_id"] for r in rows]
    written_ids = set(written)
    assert len(written) == len(written_ids), "a ledger row written twice"
    survivors = [a for a in load.answers if a.replica != 2]
    victims = [a for a in load.answers if a.replica == 2]
    assert {a.status for a in load.answers} == {200}
    assert all(a.at <= killed for a in victims)
    assert any(a.sent > killed for a in survivors)  # the other two kept serving
    assert set(load.unanswered) <= {2}
    # The other two's rows are all there, of the right status.
    assert {a.request_id for a in survivors} <= written_ids
    # The victim's: only records queued since its last commit can be lost, those of its
    # last flush interval and of the commit under way (the bound test_process_signals.py
    # asserts for one SIGKILLed process).
    lost = [a for a in victims if a.request_id not in written_ids]
    last_flush = [a for a in victims if a.at >= killed - FLUSH_INTERVAL - 0.1]
    assert all(a.at >= killed - FLUSH_INTERVAL - 0.1 for a in lost)
    assert len(lost) <= len(last_flush)
    # Nothing but what the clients saw answered, and what the victim was still answering
    # when it died (one request a client at most, none answered).
    unknown = written_ids - {a.request_id for a in load.answers}
    assert len(unknown) <= 3
    print(
        f"\nreplica 3 SIGKILLed under load: {len(victims)} answered by it, {len(lost)} rows "
        f"lost ({len(last_flush)} answered in its last {FLUSH_INTERVAL + 0.1:g} s), "
        f"{len(unknown)} written but never answered; answered by replica "
        f"{load.served_by(len(group.all))}, {len(load.unanswered)} attempts refused"
    )
