"""`GET /usage` and `llmgw usage`: the figures per user, key, model, endpoint and day, the
window, the latency percentiles' precision, migration 3's backfill of an older database
and the rebuild of its rollups by endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import pytest

from llmgw import rollups
from llmgw.api_types import CreatedKey, UsageFigures, UsageReport
from llmgw.ledger import UsageRecord
from llmgw.state import STORE
from llmgw.store import SqliteStore, Store, postgres_migrations, sqlite_migrations
from llmgw.store.sqlite_migrations import MIGRATIONS
from llmgw.store.sqlite_rows import log_row
from llmgw.times import iso_utc

from .conftest import Database, Gateway, GatewayFactory, auth, post_chat, read_rows, tiers
from .conftest import run_llmgw as llmgw
from .databases import PostgresDatabase, SqliteDatabase
from .postgres import Cluster

pytestmark = pytest.mark.both_databases

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
DAY = 86400.0
Figure = Literal["requests", "errors", "rate_limited", "prompt_tokens", "completion_tokens"]
FIGURES: tuple[Figure, ...] = (
    "requests", "errors", "rate_limited", "prompt_tokens", "completion_tokens",
)  # fmt: skip


def record(
    key_id: int | None,
    user: str,
    timestamp: float,
    *,
    status: int = 200,
    duration: float = 100.0,
    prompt: int = 0,
    completion: int = 0,
    model: str | None = "fake-model",
    endpoint: str = "/v1/chat/completions",
) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{random.getrandbits(64):x}",
        user_id=user,
        api_key_id=key_id,
        endpoint=endpoint,
        method="POST",
        status_code=status,
        duration_ms=duration,
        ttft_ms=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        usage_source="reported",
        model=model,
        upstream=None,
        timestamp=timestamp,
    )


def expected(rows: list[dict[str, Any]], group: str) -> dict[Any, dict[str, int]]:
    """The figures per group counted straight from request_logs rows: the oracle."""
    out: dict[Any, Counter[str]] = {}
    for row in rows:
        name = row["timestamp"][:10] if group == "day" else row[group]
        sums = out.setdefault(name, Counter())
        status = row["status_code"]
        sums.update(
            requests=1,
            errors=int(status >= 400 and status != 429),
            rate_limited=int(status == 429),
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
        )
    return {name: {f: sums[f] for f in FIGURES} for name, sums in out.items()}


def figures(entry: UsageFigures) -> dict[str, int]:
    assert entry["total_tokens"] == entry["prompt_tokens"] + entry["completion_tokens"]
    return {f: entry[f] for f in FIGURES}


async def chat(http: aiohttp.ClientSession, gateway: Gateway, key: str, **body: Any) -> int:
    return await post_chat(http, gateway, key, CHAT | body)


# --- the figures -------------------------------------------------------------------------


@dataclass
class Busy:
    """A gateway with traffic: its keys and the request_logs rows of the 7-day window."""

    gateway: Gateway
    alice: CreatedKey
    laptop: CreatedKey  # alice's too, deleted since
    bob: CreatedKey
    rows: list[dict[str, Any]]
    since: str  # the start of the 7-day window


@pytest.fixture
async def busy(gateway_factory: GatewayFactory, http: aiohttp.ClientSession) -> Busy:
    """A gateway whose ledger holds real requests (successes, a 404, a 429) and
    hand-made rows inside and outside the 7-day window."""
    gateway: Gateway = await gateway_factory(tiers=tiers(free=(1, 100), premium=(100, 1000)))
    alice = await gateway.create_key("alice", tier="premium")
    laptop = await gateway.create_key("alice", tier="premium")
    bob = await gateway.create_key("bob", tier="free")  # one request a minute
    statuses = [
        await chat(http, gateway, alice["key"]),
        await chat(http, gateway, alice["key"]),
        await chat(http, gateway, alice["key"], model="no-such-model"),
        await chat(http, gateway, laptop["key"]),
        await chat(http, gateway, bob["key"]),
        await chat(http, gateway, bob["key"]),
    ]
    assert statuses == [200, 200, 404, 200, 200, 429]
    now = time.time()
    await gateway.app[STORE].insert_request_logs(
        [
            # Over other routes too: no grouping but by endpoint may tell them apart.
            record(bob["id"], "bob", now - 2 * DAY, status=499, prompt=10, completion=5,
                   endpoint="/v1/embeddings"),
            record(bob["id"], "bob", now - 6 * DAY, status=502, prompt=20, model="big-model",
                   endpoint="/v1/completions"),
            record(bob["id"], "bob", now - 6 * DAY, prompt=30, completion=40, model="big-model",
                   endpoint="/v1/embeddings"),
            # Outside the window: 7 days and 2 hours ago, and 8 days ago.
            record(alice["id"], "alice", now - 7 * DAY - 7200, prompt=1000, completion=1000),
            record(bob["id"], "bob", now - 8 * DAY, status=429),
        ]
    )  # fmt: skip
    await gateway.flush_ledger()
    async with gateway.admin() as admin:
        await admin.delete_key(laptop["id"])  # its history stays, without a prefix
    since = iso_utc(rollups.window_start(7, now))
    rows = await gateway.rows("SELECT * FROM request_logs WHERE timestamp >= ?", since)
    assert len(rows) == 9
    return Busy(gateway, alice, laptop, bob, rows, since)


async def test_usage_by_user_counts_the_window_exactly(busy: Busy) -> None:
    before = time.time()
    async with busy.gateway.admin() as admin:
        report = await admin.usage(7, "user")
    after = time.time()
    assert (report["days"], report["by"]) == (7, "user")
    assert report["since"] in {
        iso_utc(rollups.window_start(7, before)),
        iso_utc(rollups.window_start(7, after)),
    }
    assert report["since"].endswith(":00:00.000Z")
    # bob: 2 real (200, 429) and 3 hand-made (499, 502, 200); alice: 4 real (one 404).
    assert [g["group"] for g in report["data"]] == ["bob", "alice"]
    bob, alice = report["data"]
    assert (bob["requests"], bob["errors"], bob["rate_limited"]) == (5, 2, 1)
    assert (alice["requests"], alice["errors"], alice["rate_limited"]) == (4, 1, 0)
    oracle = expected(busy.rows, "user_id")
    assert {g["group"]: figures(g) for g in report["data"]} == oracle
    assert figures(report["total"]) == {f: sum(o[f] for o in oracle.values()) for f in FIGURES}
    assert report["total"]["requests"] == 9
    assert alice["prompt_tokens"] > 0  # the real requests' tokens arrived


async def test_usage_by_key_names_each_key_and_keeps_deleted_ones(busy: Busy) -> None:
    async with busy.gateway.admin() as admin:
        report = await admin.usage(7, "key")
    by_id = {g["key_id"]: g for g in report["data"]}
    assert set(by_id) == {busy.alice["id"], busy.laptop["id"], busy.bob["id"]}
    for name, key in (("alice", busy.alice), ("bob", busy.bob)):
        entry = by_id[key["id"]]
        assert (entry["group"], entry["user_id"]) == (key["id"], name)
        assert entry["key_prefix"] == key["key_prefix"]
    deleted = by_id[busy.laptop["id"]]
    assert (deleted["key_prefix"], deleted["user_id"], deleted["requests"]) == (None, "alice", 1)
    assert [g["requests"] for g in report["data"]] == [5, 3, 1]
    oracle = expected(busy.rows, "api_key_id")
    assert {g["key_id"]: figures(g) for g in report["data"]} == oracle


async def test_usage_by_model_and_by_day(busy: Busy) -> None:
    async with busy.gateway.admin() as admin:
        by_model = await admin.usage(7, "model")
        by_day = await admin.usage(7, "day")
    models = {g["group"]: figures(g) for g in by_model["data"]}
    assert models == expected(busy.rows, "model")
    assert models["no-such-model"]["errors"] == 1
    assert models["big-model"] == {
        "requests": 2, "errors": 1, "rate_limited": 0, "prompt_tokens": 50,
        "completion_tokens": 40,
    }  # fmt: skip
    days = [str(g["group"]) for g in by_day["data"]]
    assert days == sorted(days)  # in calendar order
    assert {g["group"]: figures(g) for g in by_day["data"]} == expected(busy.rows, "day")
    assert iso_utc(time.time() - 6 * DAY)[:10] in days
    assert iso_utc(time.time() - 8 * DAY)[:10] not in days
    for report in (by_model, by_day):
        assert report["total"]["requests"] == 9


async def test_usage_by_endpoint_counts_each_route(busy: Busy) -> None:
    async with busy.gateway.admin() as admin:
        report = await admin.usage(7, "endpoint")
    assert report["by"] == "endpoint"
    endpoints = {g["group"]: figures(g) for g in report["data"]}
    assert endpoints == expected(busy.rows, "endpoint")
    assert [g["group"] for g in report["data"]] == [
        "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    ]  # fmt: skip
    assert endpoints["/v1/embeddings"] == {
        "requests": 2, "errors": 1, "rate_limited": 0, "prompt_tokens": 40,
        "completion_tokens": 45,
    }  # fmt: skip
    assert report["total"]["requests"] == 9


async def test_the_other_groupings_are_the_same_over_many_endpoints(
    database: Database,
) -> None:
    """The rollup cells split by endpoint add up to the cells they were: the same records
    over one route or over several give the same reports by user, key, model and day."""
    hour = 1_790_002_800.0
    routes = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")
    spread = edge_records(hour)
    spread = [dataclasses.replace(r, endpoint=routes[i % 7 % 4]) for i, r in enumerate(spread)]
    one_route = [dataclasses.replace(r, endpoint="/v1/chat/completions") for r in spread]
    reports = []
    for records in (spread, one_route):
        store = await database.open_store()
        for table in ("request_logs", "usage_hourly", "usage_hourly_latency"):
            await database.execute(f"DELETE FROM {table}")
        for start in range(0, len(records), 10):
            await store.insert_request_logs(records[start : start + 10])
        reports.append(
            {
                (days, by): await store.usage_summary(days=days, by=by, now=hour + 7200)
                for days in (1, 30)
                for by in rollups.GROUPINGS
            }
        )
        await store.close()
    split, whole = reports
    for (days, by), report in split.items():
        if by != "endpoint":
            assert orjson.dumps(report) == orjson.dumps(whole[days, by]), (days, by)
    by_endpoint = split[30, "endpoint"]
    assert {g["group"] for g in by_endpoint["data"]} == set(routes)
    assert {g["group"]: g["requests"] for g in by_endpoint["data"]} == Counter(
        r.endpoint for r in spread
    )
    assert by_endpoint["total"] == whole[30, "user"]["total"]


async def test_usage_over_more_days_takes_in_older_rows(busy: Busy) -> None:
    async with busy.gateway.admin() as admin:
        report = await admin.usage(30, "user")
    assert [(g["group"], g["requests"]) for g in report["data"]] == [("bob", 6), ("alice", 5)]
    assert report["total"]["prompt_tokens"] >= 1060


# --- latency -----------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def test_latency_percentiles_are_within_the_histograms_precision(
    gateway: Gateway,
) -> None:
    now = time.time()
    rng = random.Random(7)
    durations = [rng.lognormvariate(math.log(800), 1.0) for _ in range(500)]
    slow = [rng.uniform(2, 40) for _ in range(100)]
    records = [record(1, "carol", now - 3600, duration=d) for d in durations]
    records += [record(2, "dave", now - 3600, duration=d, status=500) for d in slow]
    # carol's 429s are answered in microseconds; counting them would halve her p50.
    records += [record(1, "carol", now - 3600, duration=0.2, status=429) for _ in range(400)]
    await gateway.app[STORE].insert_request_logs(records)
    async with gateway.admin() as admin:
        report = await admin.usage(1, "user")
    groups = {g["group"]: g for g in report["data"]}
    for name, values in (("carol", durations), ("dave", slow), (None, durations + slow)):
        entry = groups[name] if name else report["total"]
        for field, got, q in (
            ("p50", entry["latency_p50_ms"], 0.5),
            ("p95", entry["latency_p95_ms"], 0.95),
        ):
            true = nearest_rank(values, q)
            assert got is not None
            assert abs(got - true) <= 0.25 * true, (name, field, got, true)
        assert entry["latency_mean_ms"] == pytest.approx(sum(values) / len(values), abs=1e-3)
    assert groups["carol"]["rate_limited"] == 400


async def test_the_requests_tail_counts_as_errors_what_usage_does(gateway: Gateway) -> None:
    """One definition of an error (400 and up, 499 included, 429 not) for /usage and
    the tail's `status=error`, which the TUI's filter asks for."""
    now = time.time()
    statuses = [200, 400, 401, 404, 429, 429, 499, 500, 502, 200]
    await gateway.app[STORE].insert_request_logs(
        [record(None, "ann", now - 60 + i, status=s) for i, s in enumerate(statuses)]
    )
    async with gateway.admin() as admin:
        errors = await admin.requests(status="error")
        usage = await admin.usage(1, "user")
    assert sorted(r["status_code"] for r in errors) == [400, 401, 404, 499, 500, 502]
    assert usage["total"]["errors"] == len(errors)
    assert usage["total"]["rate_limited"] == statuses.count(429)


def test_percentile_precision_holds_over_the_whole_range() -> None:
    rng = random.Random(11)
    for _ in range(200):
        values = [rng.lognormvariate(rng.uniform(-3, 12), rng.uniform(0.1, 3)) for _ in range(50)]
        values = [round(v, 3) for v in values if v < 600_000]  # below the overflow bucket
        histogram = Counter(rollups.bucket_of(v) for v in values)
        for q in (0.5, 0.95):
            true, estimate = nearest_rank(values, q), rollups.percentile(histogram, q)
            assert estimate is not None
            assert abs(estimate - true) <= max(0.25 * true, 1.0 if true < 1 else 0.0), (q, true)
    # Within a bucket the rank is interpolated: half of a bucket's rows, half its width.
    low, high = rollups.bucket_range(rollups.bucket_of(100.0))
    assert high is not None
    assert rollups.percentile({rollups.bucket_of(100.0): 4}, 0.5) == round((low + high) / 2, 3)
    overflow = Counter({rollups.bucket_of(20 * 60_000.0): 3})
    assert rollups.percentile(overflow, 0.5) == rollups.BOUNDS_NS[-1] / 1e6  # a floor
    assert rollups.percentile(Counter(), 0.5) is None


async def summary(path: Path, **query: Any) -> UsageReport:
    """`GET /usage`'s body for the database at `path`, read as the gateway reads it."""
    store = await SqliteStore.open(path)
    try:
        return await store.usage_summary(**query)
    finally:
        await store.close()


# --- the window ----------------------------------------------------------------------------


async def test_the_window_is_whole_hours(database: Database) -> None:
    store = await database.open_store()
    now = 1_789_999_200.0 + 1234.5  # 20 minutes and 34.5 s into an hour
    start = rollups.window_start(1, now)
    assert start == now - 1234.5 - DAY
    await store.insert_request_logs(
        [
            record(1, "in", start),  # the first instant of the window
            record(1, "in", now),
            record(1, "out", start - 0.001),
            # Stored as `start` (iso_utc rounds to the microsecond): counted as stored.
            record(1, "in", start - 0.0000004),
        ]
    )
    report = await store.usage_summary(days=1, by="user", now=now)
    await store.close()
    assert report["since"] == iso_utc(start)
    assert [(g["group"], g["requests"]) for g in report["data"]] == [("in", 3)]
    [first] = await database.rows(
        "SELECT min(timestamp) AS t FROM request_logs WHERE user_id = 'in'"
    )
    assert first["t"] == iso_utc(start)


def edge_records(hour: float) -> list[UsageRecord]:
    """Rows on and around every 7th latency bound, of every status class, with and
    without a key or a model, over an hour boundary."""
    edges = [b / 1e6 for b in rollups.BOUNDS_NS[::7]]
    durations = [*edges, *(d + 0.001 for d in edges), *(d - 0.001 for d in edges), 0.0, 1e7]
    return [
        record(i % 3 or None, f"u{i % 4}", hour - 0.0000004 + i * 60, duration=d,
               status=(200, 429, 404, 499, 503)[i % 5], prompt=i, completion=2 * i,
               model=(None, "m1", "m2")[i % 3])
        for i, d in enumerate(durations)
    ]  # fmt: skip


async def test_postgresql_summarises_exactly_as_sqlite(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    """The same records, written in the same batches, read back as the same reports for
    every grouping and window: figures, latencies, order, types."""
    hour = 1_790_002_800.0
    records = edge_records(hour)
    name = f"llmgw_same_{uuid.uuid4().hex[:8]}"
    databases: list[Database] = [
        SqliteDatabase(tmp_path / "llmgw.db"),
        PostgresDatabase(await postgres_cluster.create_database(name)),
    ]
    reports = []
    for database in databases:
        store = await database.open_store()
        async with store.transaction() as tx:
            for n in (1, 2):
                await tx.insert_key(
                    key_hash=f"h{n}", key_prefix=f"sk-internal-{n:04d}", user_id=f"u{n}",
                    tier="free", description="",
                )  # fmt: skip
        for start in range(0, len(records), 10):
            await store.insert_request_logs(records[start : start + 10])
        reports.append(
            [
                await store.usage_summary(days=days, by=by, now=hour + 7200)
                for days in (1, 30)
                for by in rollups.GROUPINGS
            ]
        )
        await store.close()
    await postgres_cluster.drop_database(name)
    sqlite, postgres = reports
    assert len(sqlite[0]["data"]) > 1
    assert orjson.dumps(postgres) == orjson.dumps(sqlite)  # types too: 1 is not 1.0


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("days=0", "days"),
        ("days=3651", "days"),
        ("days=week", "days"),
        ("by=team", "by"),
        ("days=7&by=", "by"),
    ],
)
async def test_bad_days_or_by_is_a_400_naming_it(gateway: Gateway, query: str, param: str) -> None:
    connector = aiohttp.UnixConnector(path=str(gateway.socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://llmgw/usage?{query}") as resp,
    ):
        assert resp.status == 400
        error = orjson.loads(await resp.read())["error"]
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize(
    ("args", "option"),
    [(("--days", "0"), "--days"), (("--days", "x"), "--days"), (("--by", "team"), "--by")],
)
async def test_cli_refuses_bad_options_with_exit_2(
    gateway: Gateway, args: tuple[str, ...], option: str
) -> None:
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "usage", *args)
    assert code == 2
    assert option in err
    assert out == ""


# --- the CLI -------------------------------------------------------------------------------


async def test_cli_json_is_the_api_response(busy: Busy) -> None:
    gateway = busy.gateway
    code, out, err = await llmgw(
        "--socket", str(gateway.socket_path), "usage", "--by", "key", "--days", "7", "--json"
    )
    assert code == 0, err
    printed = orjson.loads(out)  # all of stdout is one document
    async with gateway.admin() as admin:
        assert printed == await admin.usage(7, "key")


async def test_cli_table_has_a_row_per_group_and_a_total(busy: Busy) -> None:
    code, out, err = await llmgw("--socket", str(busy.gateway.socket_path), "usage")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["USER", "REQUESTS", "ERRORS", "429S"]
    assert [line.split()[:4] for line in lines] == [
        ["bob", "5", "2", "1"],
        ["alice", "4", "1", "0"],
        ["TOTAL", "9", "3", "1"],
    ]


async def test_cli_table_by_endpoint_has_a_row_per_route(
    busy: Busy, http: aiohttp.ClientSession
) -> None:
    gateway = busy.gateway
    body = {"model": "fake-model", "input": ["alpha beta", "gamma"]}
    async with http.post(
        f"{gateway.base_url}/embeddings", json=body, headers=auth(busy.alice["key"])
    ) as resp:
        assert resp.status == 200
    await gateway.flush_ledger()
    code, out, err = await llmgw("--socket", str(gateway.socket_path), "usage", "--by", "endpoint")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:6] == ["ENDPOINT", "REQUESTS", "ERRORS", "429S", "PROMPT", "COMPLETION"]
    rows = await gateway.rows("SELECT * FROM request_logs WHERE timestamp >= ?", busy.since)
    oracle = expected(rows, "endpoint")
    assert oracle["/v1/embeddings"]["requests"] == 3  # 2 made by hand, 1 through the gateway
    assert [line.split()[0] for line in lines] == [
        "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "TOTAL",
    ]  # fmt: skip
    for line in lines[:-1]:
        name, *cells = line.split()
        assert [int(c) for c in cells[:5]] == [oracle[name][f] for f in FIGURES], name
    assert lines[-1].split()[1] == "10"


async def test_cli_table_by_key_shows_a_deleted_keys_missing_prefix(busy: Busy) -> None:
    code, out, err = await llmgw(
        "--socket", str(busy.gateway.socket_path), "usage", "--by", "key", "--days", "30"
    )
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["KEY", "PREFIX", "USER", "REQUESTS"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows[str(busy.laptop["id"])][1:4] == ["-", "alice", "1"]
    assert rows[str(busy.bob["id"])][1:4] == [busy.bob["key_prefix"], "bob", "6"]
    assert rows["TOTAL"][1] == "11"


# --- migration 3 ---------------------------------------------------------------------------


def _rollup_tables(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        hourly = db.execute("SELECT * FROM usage_hourly ORDER BY 1, 2, 3, 4").fetchall()
        latency = db.execute("SELECT * FROM usage_hourly_latency ORDER BY 1, 2, 3, 4, 5").fetchall()
    return hourly, latency


async def test_backfill_builds_what_the_ledger_writer_builds(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.db"
    store = await SqliteStore.open(path)
    await store.insert_request_logs(edge_records(1_790_002_800.0))  # the start of an hour
    await store.close()
    live = _rollup_tables(path)
    assert len(live[1]) > 10

    # Take the database back to before the rollups: the rows stay, the rollups go, and
    # migrations 3 (the backfill) and 8 (the rebuild by endpoint) run again.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "DELETE FROM schema_migrations WHERE version IN (3, 8);"
            " DROP TABLE usage_hourly; DROP TABLE usage_hourly_latency;"
        )
    store = await SqliteStore.open(path)
    await store.close()
    backfilled = _rollup_tables(path)
    assert backfilled[1] == live[1]  # every row in the same latency bucket
    # Sums of floats in another order may differ in the last bits.
    assert [r[:-1] for r in backfilled[0]] == [r[:-1] for r in live[0]]
    for got, want in zip(backfilled[0], live[0], strict=True):
        assert got[-1] == pytest.approx(want[-1])


async def test_upgrading_a_version_2_database_gives_the_right_figures(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.db"
    now = time.time()
    columns = "request_id, user_id, api_key_id, endpoint, method, status_code, duration_ms,"
    columns += " prompt_tokens, completion_tokens, usage_source, model, timestamp"
    rows = [
        ("a", "alice", 1, "/v1/chat/completions", "POST", 200, 120.0, 10, 20, "reported",
         "m1", iso_utc(now - 3600)),
        ("b", "alice", 1, "/v1/completions", "POST", 429, 0.3, 0, 0, "estimated", None,
         iso_utc(now - 2 * DAY)),
        ("c", "bob", None, "/v1/chat/completions", "POST", 499, 9000.0, 5, 1, "partial",
         "m1", iso_utc(now - 3 * DAY)),
        ("d", "bob", 2, "/v1/chat/completions", "POST", 200, 50.0, 100, 100, "reported",
         "m2", iso_utc(now - 20 * DAY)),
    ]  # fmt: skip
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for migration in MIGRATIONS[:2]:
            db.executescript(migration.sql)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.name, iso_utc(now)),
            )
        db.executemany(f"INSERT INTO request_logs ({columns}) VALUES ({', '.join('?' * 12)})", rows)
    store = await SqliteStore.open(path)
    await store.close()
    applied = read_rows(path, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in applied] == [m.version for m in MIGRATIONS]

    report = await summary(path, days=7, by="user", now=now)
    assert [(g["group"], figures(g)) for g in report["data"]] == [
        ("alice", {"requests": 2, "errors": 0, "rate_limited": 1, "prompt_tokens": 10,
                   "completion_tokens": 20}),
        ("bob", {"requests": 1, "errors": 1, "rate_limited": 0, "prompt_tokens": 5,
                 "completion_tokens": 1}),
    ]  # fmt: skip
    alice, bob = report["data"]
    assert alice["latency_p50_ms"] == pytest.approx(120.0, rel=0.25)  # the 429 left out
    assert bob["latency_p95_ms"] == pytest.approx(9000.0, rel=0.25)
    by_key = await summary(path, days=7, by="key", now=now)
    assert {g["key_id"] for g in by_key["data"]} == {1, None}  # bob's row had no key
    by_model = await summary(path, days=30, by="model", now=now)
    assert {g["group"]: g["requests"] for g in by_model["data"]} == {"m1": 2, None: 1, "m2": 1}


# --- the rebuild by endpoint (SQLite's migration 8, PostgreSQL's 4) -------------------------


async def test_rebuilding_by_endpoint_keeps_every_figure_and_what_pruned_hours_held(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before rollups had the endpoint, its rollups folded from
    its ledger, part of which was pruned since: after the rebuild the reports by user,
    key, model and day are what they were, and by endpoint the pruned rows are one
    unnamed group."""
    hour = 1_790_002_800.0
    routes = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    hours = [*edge_records(hour - 3600), *edge_records(hour), *edge_records(hour + 3600)]
    records = [dataclasses.replace(r, endpoint=routes[i % 5 % 3]) for i, r in enumerate(hours)]
    module = sqlite_migrations if database.kind == "sqlite" else postgres_migrations
    before = len(module.MIGRATIONS) - 1  # the last: the rebuild
    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", module.MIGRATIONS[:before])
        store = await database.open_store()
        await store.close()
    assert "endpoint" not in await database.columns("usage_hourly")
    # The ledger rows and the rollups as the fold before the endpoint made them.
    totals: dict[tuple[Any, ...], list[float]] = {}
    latency: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        row = log_row(r)
        await database.execute(
            "INSERT INTO request_logs (request_id, user_id, api_key_id, endpoint, method,"
            " status_code, duration_ms, ttft_ms, prompt_tokens, completion_tokens,"
            " usage_source, model, upstream, timestamp)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            *row,
        )
        cell = (row[13][:13], r.user_id, r.api_key_id or 0, r.model or "")
        sums = totals.setdefault(cell, [0, 0, 0, 0, 0, 0.0])
        for i, add in enumerate((1, 400 <= r.status_code != 429, r.status_code == 429)):
            sums[i] += add
        sums[3] += r.prompt_tokens
        sums[4] += r.completion_tokens
        if r.status_code != 429:
            sums[5] += row[6]
            latency[(*cell, rollups.bucket_of(row[6]))] += 1
    for cell, sums in totals.items():
        await database.execute(
            "INSERT INTO usage_hourly VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", *cell, *sums
        )
    for cell_bucket, count in latency.items():
        await database.execute(
            "INSERT INTO usage_hourly_latency VALUES (?, ?, ?, ?, ?, ?)", *cell_bucket, count
        )
    # Pruned since: the first hour's rows, and the second's first ten minutes (the cells
    # of that hour are split between the ledger and what only the rollups hold).
    cutoff = iso_utc(hour + 600)
    pruned = [r for r in records if iso_utc(r.timestamp) < cutoff]
    assert 0 < len(pruned) < len(records)
    await database.execute("DELETE FROM request_logs WHERE timestamp < ?", cutoff)

    async def reports(store: Store) -> dict[tuple[int, str], UsageReport]:
        return {
            (days, by): await store.usage_summary(days=days, by=by, now=hour + 7200)
            for days in (1, 30)
            for by in ("user", "key", "model", "day")
        }

    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", module.MIGRATIONS[:before])
        store = await database.open_store()
        old = await reports(store)
        await store.close()

    store = await database.open_store()
    new = await reports(store)
    by_endpoint = await store.usage_summary(days=30, by="endpoint", now=hour + 7200)
    await store.close()
    applied = await database.rows("SELECT max(version) AS v FROM schema_migrations")
    assert applied[0]["v"] == module.MIGRATIONS[-1].version
    for key, want in old.items():
        got = new[key]
        assert (got["data"] and got) == want or _same_but_mean(got, want), key
    groups = {g["group"]: figures(g) for g in by_endpoint["data"]}
    kept = [r for r in records if r not in pruned]
    oracle = expected(
        [
            {"endpoint": r.endpoint, "status_code": r.status_code, "timestamp": "",
             "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
            for r in kept
        ],
        "endpoint",
    )  # fmt: skip
    assert groups.pop(None) == {
        "requests": len(pruned),
        "errors": sum(400 <= r.status_code != 429 for r in pruned),
        "rate_limited": sum(r.status_code == 429 for r in pruned),
        "prompt_tokens": sum(r.prompt_tokens for r in pruned),
        "completion_tokens": sum(r.completion_tokens for r in pruned),
    }
    assert groups == oracle
    # The latency cells were split the same way: every row still in its bucket.
    [cells] = await database.rows("SELECT sum(count) AS n FROM usage_hourly_latency")
    assert cells["n"] == sum(latency.values())


def _same_but_mean(got: UsageReport, want: UsageReport) -> bool:
    """Equal reports, the mean latencies within float noise: sums of floats in another
    order may differ in the last bits."""
    pairs = zip((*got["data"], got["total"]), (*want["data"], want["total"]), strict=True)
    for a, b in pairs:
        assert a["latency_mean_ms"] == pytest.approx(b["latency_mean_ms"])
        assert {**a, "latency_mean_ms": 0} == {**b, "latency_mean_ms": 0}
    return (got["days"], got["by"], got["since"]) == (want["days"], want["by"], want["since"])
