"""Routing through the real gateway, over several fake vLLMs on real sockets (issue 17):
vLLM's own load from its /metrics with ours added as it changes, the policies, bounded load,
affinity across an upstream leaving and coming back, and failover on 502/503 while
nothing has reached the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmgw.config import (
    AdminSettings,
    ConfigError,
    RoutingSettings,
    UpstreamSettings,
    load_settings,
)
from llmgw.fake_vllm import FakeVLLM
from llmgw.routing import key_digest, prefix_key, site_hash, weight
from llmgw.state import CLIENT, UPSTREAMS

from .conftest import Gateway, GatewayFactory, auth, sse_events, wait_for

CHAT_PATH = "/v1/chat/completions"
# Long enough that no test's scrape comes between the requests it counts.
NEVER = 3600.0


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeVLLM]]:
    started: list[FakeVLLM] = []
    for _ in range(3):
        fake = FakeVLLM()
        await fake.start()
        started.append(fake)
    yield started
    for fake in started:
        if fake.behaviour.hold is not None:
            fake.behaviour.hold.set()
        await fake.stop()


async def routed(
    gateway_factory: GatewayFactory,
    upstreams: Sequence[FakeVLLM],
    admin: AdminSettings | None = None,
    **routing: Any,
) -> tuple[Gateway, str]:
    """A gateway over `upstreams` with `[routing]` settings, and a premium key."""
    gateway: Gateway = await gateway_factory(
        upstreams=tuple(UpstreamSettings(f.url) for f in upstreams),
        routing=RoutingSettings(**{"metrics_interval": NEVER, **routing}),
        **({"admin": admin} if admin else {}),
    )
    key = (await gateway.create_key("alice", tier="premium"))["key"]
    return gateway, key


def chat(system: str = "You are terse.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **extra,
    }


async def send(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    key: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    read_loads: bool = False,
) -> tuple[int, bytes]:
    """One chat completion through the gateway; with `read_loads`, after a read of the
    upstreams' /metrics, as the scraper makes every second (so what was sent before
    does not weigh on this one)."""
    if read_loads:
        await gateway.app[UPSTREAMS].scrape_all(gateway.app[CLIENT])
    async with http.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=auth(key) | (headers or {})
    ) as resp:
        return resp.status, await resp.read()


def served(fakes: Sequence[FakeVLLM]) -> list[int]:
    """Chat requests each fake has had."""
    return [len(f.behaviour.requests_to(CHAT_PATH)) for f in fakes]


def home_of(fakes: Sequence[FakeVLLM], system: str) -> FakeVLLM:
    """The fake a chat with this system prompt has reached (exactly one of them)."""
    [home] = [f for f in fakes if system in systems_at(f)]
    return home


def systems_at(fake: FakeVLLM) -> list[str]:
    """The system prompts of the chats `fake` has had."""
    return [
        r.json["messages"][0]["content"] for r in fake.behaviour.requests_to(CHAT_PATH) if r.json
    ]


def rendezvous_first(fakes: Sequence[FakeVLLM], body: dict[str, Any]) -> FakeVLLM:
    """Where rendezvous hashing of the body's prefix puts it, computed apart from the
    gateway: what any replica of it computes."""
    key = prefix_key(body)
    assert key is not None
    digest = key_digest(key)
    return max(fakes, key=lambda f: weight(digest, site_hash(f.url)))


async def hold_directly(
    http: aiohttp.ClientSession, fake: FakeVLLM, count: int
) -> list[asyncio.Task[Any]]:
    """`count` requests held open at `fake` by someone other than the gateway (another
    replica, a script): load only vLLM's /metrics knows of."""
    fake.behaviour.hold = asyncio.Event()
    tasks = [
        asyncio.create_task(http.post(fake.url + CHAT_PATH, json=chat())) for _ in range(count)
    ]
    await wait_for(lambda: fake.behaviour.held == count)
    return tasks


async def let_go(fake: FakeVLLM, tasks: list[asyncio.Task[Any]]) -> None:
    assert fake.behaviour.hold is not None
    fake.behaviour.hold.set()
    for response in await asyncio.gather(*tasks):
        response.release()
    fake.behaviour.hold = None


# --- vLLM's load -------------------------------------------------------------------


async def test_least_loaded_goes_by_vllms_own_queue(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    busy, idle = fakes[0], fakes[1]
    held = await hold_directly(http, busy, 3)
    gateway, key = await routed(gateway_factory, [busy, idle])  # reads /metrics at start
    status = {s["url"]: s for s in gateway.app[UPSTREAMS].status()}
    assert (status[busy.url]["waiting"], status[busy.url]["running"]) == (3, 0)
    assert status[idle.url]["waiting"] == 0
    for _ in range(3):
        assert (await send(http, gateway, key, chat()))[0] == 200
    # None of the gateway's own requests is in flight anywhere: only vLLM's queue kept
    # them off the busy server.
    assert served([busy, idle]) == [3, 3]  # the 3 held were sent to it directly
    await let_go(busy, held)


async def test_a_burst_between_reads_adds_to_what_vllm_said(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    busy, idle = fakes[0], fakes[1]
    others = await hold_directly(http, busy, 2)  # another replica's, say
    gateway, key = await routed(gateway_factory, [busy, idle])
    pool = gateway.app[UPSTREAMS]
    idle.behaviour.hold = asyncio.Event()
    burst = []
    for n in range(4):  # no read of /metrics in between
        burst.append(asyncio.create_task(send(http, gateway, key, chat())))
        await wait_for(lambda: busy.behaviour.held + idle.behaviour.held == 2 + n + 1)  # noqa: B023
    # Loads (others as read + ours now): 2+0 vs 0+0, 2 vs 1, 2 vs 2 (the first listed
    # wins a tie), 3 vs 2: the burst filled in around vLLM's own count.
    assert [busy.behaviour.held, idle.behaviour.held] == [3, 3]
    assert [u.load("fake-model") for u in pool.upstreams] == [3, 3]
    idle.behaviour.hold.set()
    await let_go(busy, others)
    assert [status for status, _ in await asyncio.gather(*burst)] == [200] * 4
    # Ours ended: off the load at once; the others' stay as read until the next read.
    assert [u.load("fake-model") for u in pool.upstreams] == [2, 0]
    await pool.scrape_all(gateway.app[CLIENT])
    assert [u.load("fake-model") for u in pool.upstreams] == [0, 0]


async def test_without_vllms_metrics_requests_in_flight_decide(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    for fake in fakes[:2]:
        fake.behaviour.serve_metrics = False  # a 404, as from a server without them
        fake.behaviour.hold = asyncio.Event()
    gateway, key = await routed(gateway_factory, fakes[:2])
    assert [u.loads for u in gateway.app[UPSTREAMS].upstreams] == [None, None]
    tasks = [asyncio.create_task(send(http, gateway, key, chat())) for _ in range(4)]
    await wait_for(lambda: sum(f.behaviour.held for f in fakes[:2]) == 4)
    assert [f.behaviour.held for f in fakes[:2]] == [2, 2]
    status = gateway.app[UPSTREAMS].status()
    assert [(s["load"], s["waiting"], s["running"]) for s in status] == [(2, None, None)] * 2
    for fake in fakes[:2]:
        assert fake.behaviour.hold is not None
        fake.behaviour.hold.set()
    assert [status for status, _ in await asyncio.gather(*tasks)] == [200] * 4


# --- prefix affinity and sessions -------------------------------------------------------


async def test_prefix_affinity_keeps_a_prompt_where_its_cache_is(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    gateway, key = await routed(gateway_factory, fakes, policy="prefix-affinity")
    prompts = [f"You are the assistant of team {n}. " * 20 for n in range(12)]
    for _ in range(3):
        for system in prompts:
            assert (await send(http, gateway, key, chat(system), read_loads=True))[0] == 200
    for system in prompts:
        # Every turn on one server, the one rendezvous hashing names (as any replica would).
        assert home_of(fakes, system) is rendezvous_first(fakes, chat(system))
    assert sum(1 for n in served(fakes) if n) >= 2  # 12 prompts do not all hash to one


async def test_replicas_agree_where_a_prefix_lives(
    gateway_factory: GatewayFactory,
    fakes: list[FakeVLLM],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    one, key_one = await routed(gateway_factory, fakes, policy="prefix-affinity")
    # Another replica, its upstreams listed in another order, sharing nothing with the first
    # (but the database of keys).
    two, key_two = await routed(
        gateway_factory,
        fakes[::-1],
        AdminSettings(socket=str(tmp_path / "two.sock")),
        policy="prefix-affinity",
    )
    for n in range(10):
        system = f"Shared prompt number {n}: answer in French."
        assert (await send(http, one, key_one, chat(system), read_loads=True))[0] == 200
        assert (await send(http, two, key_two, chat(system), read_loads=True))[0] == 200
        home = home_of(fakes, system)  # raises unless both went to one server
        assert len(home.behaviour.requests_to(CHAT_PATH)) >= 2


async def test_bounded_load_never_sends_more_than_the_margin_above_the_least_loaded(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    margin = 2
    gateway, key = await routed(gateway_factory, fakes, policy="prefix-affinity", margin=margin)
    for fake in fakes:
        fake.behaviour.hold = asyncio.Event()
    tasks = []
    for n in range(12):  # one prefix, so all of it wants one server
        before = [f.behaviour.held for f in fakes]
        tasks.append(asyncio.create_task(send(http, gateway, key, chat())))
        total = sum(before) + 1
        # (awaited at once: the loop's variables do not move under it)
        await wait_for(lambda: sum(f.behaviour.held for f in fakes) == total)  # noqa: B023
        after = [f.behaviour.held for f in fakes]
        [chosen] = [i for i in range(3) if after[i] == before[i] + 1]
        assert before[chosen] <= min(before) + margin, (n, before, chosen)
    held = [f.behaviour.held for f in fakes]
    assert max(held) - min(held) <= margin + 1
    # Its home took all it could: the margin's worth beyond the others.
    home = fakes.index(rendezvous_first(fakes, chat()))
    assert held[home] == max(held)
    for fake in fakes:
        assert fake.behaviour.hold is not None
        fake.behaviour.hold.set()
    assert [status for status, _ in await asyncio.gather(*tasks)] == [200] * 12


async def test_affinity_survives_an_upstream_leaving_and_coming_back(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    gateway, key = await routed(gateway_factory, fakes, policy="prefix-affinity")
    prompts = [f"Team {n} keeps its style guide here." for n in range(30)]

    async def homes() -> dict[str, str]:
        where = {}
        for system in prompts:
            before = served(fakes)
            assert (await send(http, gateway, key, chat(system), read_loads=True))[0] == 200
            [where[system]] = [
                f.url for f, n, now in zip(fakes, before, served(fakes), strict=True) if now > n
            ]
        return where

    first = await homes()
    leaving = fakes[2]
    await leaving.stop()
    during = await homes()  # its prompts fail over (connect error) to their next choice
    assert not gateway.app[UPSTREAMS].upstreams[2].healthy
    moved = {p for p in prompts if during[p] != first[p]}
    assert moved == {p for p in prompts if first[p] == leaving.url}
    assert moved, "no prompt lived on the server that left: the test proves nothing"
    await leaving.start()  # the same port
    await gateway.app[UPSTREAMS].probe_all(gateway.app[CLIENT])  # the prober's next round
    assert await homes() == first  # each prompt is back where its cache is


async def test_session_routes_by_the_session_header_else_the_user(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    gateway, key = await routed(gateway_factory, fakes, policy="session")
    sessions = [f"session-{n}" for n in range(12)]
    for turn in range(3):
        for session in sessions:
            # A different prompt each turn: only the session decides.
            header = {"x-session-id": session}
            body = chat(f"{session} turn {turn}")
            assert (await send(http, gateway, key, body, header, read_loads=True))[0] == 200
            body = chat(f"{session} as user, turn {turn}", user=session)
            assert (await send(http, gateway, key, body, read_loads=True))[0] == 200
    for session in sessions:
        homes = {
            id(home_of(fakes, f"{session}{how} turn {turn}"))
            for how in ("", " as user,")
            for turn in range(3)
        }
        # Every turn, by header or by user, on one server: a header and a body's user of
        # one name are one session.
        assert len(homes) == 1, session
    assert sum(1 for n in served(fakes) if n) >= 2
    # The header is the gateway's to read: it does not go on to vLLM.
    assert not any(
        "x-session-id" in r.headers for f in fakes for r in f.behaviour.requests_to(CHAT_PATH)
    )


async def test_a_models_own_policy_overrides_the_default(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    gateway, key = await routed(
        gateway_factory, fakes[:2], model_policies=("fake-model=prefix-affinity",)
    )
    for _ in range(4):
        assert (await send(http, gateway, key, chat("one prompt"), read_loads=True))[0] == 200
    # least-loaded (the default) would have alternated; the model's policy keeps it home.
    assert sorted(served(fakes[:2])) == [0, 4]


# --- full upstreams and failover ---------------------------------------------------------


async def test_an_upstream_queueing_more_than_max_waiting_is_passed_over(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    home = rendezvous_first(fakes[:2], chat())
    other = fakes[1] if home is fakes[0] else fakes[0]
    held = await hold_directly(http, home, 3)
    # A margin so wide only max_waiting can move the prompt off its home.
    gateway, key = await routed(
        gateway_factory, fakes[:2], policy="prefix-affinity", margin=100.0, max_waiting=2
    )
    status = {s["url"]: s for s in gateway.app[UPSTREAMS].status()}
    assert status[home.url]["full"] and not status[other.url]["full"]
    assert (await send(http, gateway, key, chat()))[0] == 200
    assert len(other.behaviour.requests_to(CHAT_PATH)) == 1
    await let_go(home, held)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_503_before_the_first_byte_fails_over_once(
    gateway_factory: GatewayFactory,
    fakes: list[FakeVLLM],
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    down, up = fakes[0], fakes[1]
    down.behaviour.fail = "http_error"  # every request: 503, vLLM's overloaded engine
    gateway, key = await routed(gateway_factory, [down, up])
    status, raw = await send(http, gateway, key, chat(stream=stream))
    assert status == 200
    if stream:
        assert sse_events(raw)[-1] == "data: [DONE]"
    # Equally loaded, the first would be tried first again: it is full for now.
    status, _ = await send(http, gateway, key, chat(stream=stream))
    assert status == 200
    assert served([down, up]) == [1, 2]
    rows = await gateway.ledger_rows()
    assert [(r["status_code"], r["upstream"]) for r in rows] == [(200, up.url)] * 2
    assert [r["completion_tokens"] for r in rows] == [2, 2]
    # Charged once per request, not once per upstream tried.
    [row] = await gateway.rows("SELECT COUNT(*) AS n FROM request_logs")
    assert row["n"] == 2


async def test_a_503_from_every_upstream_reaches_the_client_after_one_try_each(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    for fake in fakes:
        fake.behaviour.fail = "http_error"
        fake.behaviour.http_error_retry_after = "7"
    gateway, key = await routed(gateway_factory, fakes)
    async with http.post(
        f"{gateway.base_url}/chat/completions", json=chat(), headers=auth(key)
    ) as resp:
        body = await resp.json()
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"  # the last one's answer, passed on
    assert body["error"]["message"]
    assert served(fakes) == [1, 1, 1]
    [row] = await gateway.ledger_rows()
    assert (row["status_code"], row["upstream"]) == (503, fakes[2].url)


async def test_a_502_fails_over_too_but_a_400_does_not(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    first, second = fakes[0], fakes[1]
    first.behaviour.fail, first.behaviour.http_error_status = "http_error", 502
    gateway, key = await routed(gateway_factory, [first, second], policy="round-robin")
    assert (await send(http, gateway, key, chat()))[0] == 200
    assert served([first, second]) == [1, 1]
    # A 502 does not mark the server full: round-robin tries it again in its turn.
    first.behaviour.http_error_status = 400
    assert (await send(http, gateway, key, chat()))[0] == 200  # the second's turn
    status, _ = await send(http, gateway, key, chat())  # the first's: its 400 is the answer
    assert status == 400
    assert served([first, second]) == [2, 2]


async def test_no_failover_once_the_client_has_a_byte(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    broken, spare = fakes[0], fakes[1]
    broken.behaviour.fail, broken.behaviour.fail_after_tokens = "error", 1
    gateway, key = await routed(gateway_factory, [broken, spare], policy="round-robin")
    status, raw = await send(http, gateway, key, chat(stream=True))
    assert status == 200  # the stream had begun: its failure is told inside it
    assert any('"error"' in event for event in sse_events(raw))
    assert served([broken, spare]) == [1, 0]


# --- settings ----------------------------------------------------------------------------


def test_routing_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.toml"
    path.write_text(
        '[routing]\npolicy = "prefix-affinity"\nmodel_policies = ["chat-model=session"]\n'
        "margin = 2\nmax_waiting = 0\n"
    )
    routing = load_settings(path, {}).routing
    assert routing.policy_of("chat-model") == "session"
    assert routing.policy_of("other") == "prefix-affinity"
    assert (routing.margin, routing.max_waiting) == (2.0, 0)
    environ = {"LLMGW_ROUTING_POLICY": "round-robin", "LLMGW_ROUTING_METRICS_INTERVAL": "0"}
    from_env = load_settings(path, environ).routing
    assert (from_env.policy, from_env.metrics_interval) == ("round-robin", 0.0)
    assert load_settings(None, {}).routing == RoutingSettings()
    assert RoutingSettings().policy == "least-loaded"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('policy = "fastest"', "[routing] policy: expected one of least-loaded, prefix-affinity"),
        ('model_policies = ["m=random"]', '[routing] model_policies: expected "MODEL=POLICY"'),
        ('model_policies = ["session"]', '[routing] model_policies: expected "MODEL=POLICY"'),
        ("margin = -1", "[routing] margin, metrics_interval, max_waiting: must not be negative"),
    ],
)
def test_bad_routing_settings_are_named(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "llmgw.toml"
    path.write_text(f"[routing]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert str(caught.value).startswith(message), caught.value


async def test_metrics_interval_zero_never_reads_metrics(
    gateway_factory: GatewayFactory, fakes: list[FakeVLLM], http: aiohttp.ClientSession
) -> None:
    gateway, key = await routed(gateway_factory, fakes[:2], metrics_interval=0.0)
    assert (await send(http, gateway, key, chat()))[0] == 200
    assert [f.behaviour.requests_to("/metrics") for f in fakes[:2]] == [[], []]
    assert [u.loads for u in gateway.app[UPSTREAMS].upstreams] == [None, None]
