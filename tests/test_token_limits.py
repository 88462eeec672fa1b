"""Token limits, concurrency and priority through the gateway, as a client sees them
(issue 15): the headers, the 429s (in the OpenAI SDK too), what a request is charged
however it ends, max_tokens filled in, and the tier's priority sent only where vLLM
schedules by it. The clock is a FakeClock that never moves: nothing refills, so every
number is exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDict
from openai.types.chat import ChatCompletionMessageParam

from llmgw.config import TierSettings, UpstreamSettings, load_settings
from llmgw.fake_vllm import FakeVLLM, count_prompt_tokens
from llmgw.limits import limits_for
from llmgw.limits.base import format_duration
from llmgw.state import KEYS, LIMITER
from llmgw.usage import estimate_prompt_tokens

from .conftest import FakeClock, Gateway, GatewayFactory, auth, post, sse_events
from .failures.conftest import assert_settled

# One word of 28 characters: estimated 7 prompt tokens, as the fake vLLM counts it
# (1 word + 4 for the message + 2 for the generation prompt).
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "a" * 28}]
EXACT: dict[str, Any] = {"model": "fake-model", "messages": MESSAGES}
PROMPT = 7
CHAT = "/chat/completions"


def tier(**limits: Any) -> dict[str, TierSettings]:
    return {"free": TierSettings(1000, 10_000, **limits)}


async def limited(
    gateway_factory: GatewayFactory, clock: FakeClock, **limits: Any
) -> tuple[Gateway, str, int]:
    gateway: Gateway = await gateway_factory(clock=clock, tiers=tier(**limits))
    created = await gateway.create_key("alice", tier="free")
    return gateway, created["key"], int(created["id"])


async def send(
    gateway: Gateway, key: str, body: dict[str, Any]
) -> tuple[int, CIMultiDict[str], bytes]:
    return await post(f"{gateway.base_url}{CHAT}", orjson.dumps(body), auth(key))


async def tokens_left(gateway: Gateway, key_id: int) -> tuple[int | None, int | None]:
    """What the key's token buckets (minute, day) hold now."""
    key = gateway.app[KEYS].get(key_id)
    assert key is not None
    decision = await gateway.app[LIMITER].windows(key_id, limits_for(key, gateway.settings))
    minute, day = decision.tokens_minute, decision.tokens_day
    return (
        minute.remaining if minute is not None else None,
        day.remaining if day is not None else None,
    )


TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "X-RateLimit-Limit-Tokens-Minute",
    "X-RateLimit-Remaining-Tokens-Minute",
    "X-RateLimit-Limit-Tokens-Day",
    "X-RateLimit-Remaining-Tokens-Day",
)


async def test_no_token_headers_without_a_token_limit(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway, key, _ = await limited(gateway_factory, clock)
    status, headers, _ = await send(gateway, key, {**EXACT, "max_tokens": 5})
    assert status == 200
    assert "x-ratelimit-limit-requests" in headers
    assert [h for h in TOKEN_HEADERS if h in headers] == []
    # Nor is max_tokens filled in: nothing counts tokens.
    assert (await send(gateway, key, EXACT))[0] == 200
    [_, second] = fake.behaviour.requests_to("/v1/chat/completions")
    assert second.json == EXACT


async def test_token_headers_tell_each_window(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway, key, _ = await limited(
        gateway_factory, clock, tokens_per_minute=1000, tokens_per_day=5000
    )
    status, headers, _ = await send(gateway, key, {**EXACT, "max_tokens": 5})
    assert status == 200
    # The reservation (7 + 5) is taken from both windows at admission.
    assert {h: headers[h] for h in TOKEN_HEADERS} == {
        "x-ratelimit-limit-tokens": "1000",  # the minute's: closest to empty
        "x-ratelimit-remaining-tokens": "988",
        "x-ratelimit-reset-tokens": format_duration(12 / (1000 / 60)),
        "X-RateLimit-Limit-Tokens-Minute": "1000",
        "X-RateLimit-Remaining-Tokens-Minute": "988",
        "X-RateLimit-Limit-Tokens-Day": "5000",
        "X-RateLimit-Remaining-Tokens-Day": "4988",
    }
    assert headers["x-ratelimit-reset-tokens"] == "720ms"
    status, headers, _ = await send(gateway, key, {**EXACT, "max_tokens": 5})
    assert (
        headers["X-RateLimit-Remaining-Tokens-Minute"],
        headers["X-RateLimit-Remaining-Tokens-Day"],
    ) == ("976", "4976")
    await assert_settled(gateway, rows=2)


async def test_only_a_day_limit_has_only_the_day_headers(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway, key, _ = await limited(gateway_factory, clock, tokens_per_day=500)
    _, headers, _ = await send(gateway, key, {**EXACT, "max_tokens": 5})
    assert [h for h in TOKEN_HEADERS if h in headers] == [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "X-RateLimit-Limit-Tokens-Day",
        "X-RateLimit-Remaining-Tokens-Day",
    ]
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == (
        "500",
        "488",
    )


async def test_a_request_larger_than_the_limit_is_refused_without_retry_after(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway, key, _ = await limited(gateway_factory, clock, tokens_per_minute=100)
    status, headers, body = await send(gateway, key, {**EXACT, "max_tokens": 94})
    assert status == 429
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert error["message"].startswith("Request too large for tokens per minute: limit 100")
    assert "requested 101" in error["message"]
    assert "Retry-After" not in headers and "retry-after-ms" not in headers
    assert fake.behaviour.requests_to("/v1/chat/completions") == []
    # It cost nothing: a request that fits exactly is admitted.
    assert (await send(gateway, key, {**EXACT, "max_tokens": 93}))[0] == 200
    await assert_settled(gateway, rows=2)


async def test_a_full_bucket_refuses_with_retry_after(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway, key, _ = await limited(gateway_factory, clock, tokens_per_minute=20)
    assert (await send(gateway, key, {**EXACT, "max_tokens": 5}))[0] == 200
    status, headers, body = await send(gateway, key, {**EXACT, "max_tokens": 5})
    assert status == 429
    error = orjson.loads(body)["error"]
    assert error["type"] == "tokens"
    assert error["message"].startswith("Rate limit reached for tokens per minute: limit 20")
    # 8 left, 12 wanted: 4 tokens at 20 a minute refill in 12 s.
    assert headers["Retry-After"] == "12"
    assert headers["X-RateLimit-Remaining-Tokens-Minute"] == "8"


async def test_settle_gives_back_what_was_not_used(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    gateway, key, key_id = await limited(gateway_factory, clock, tokens_per_minute=1000)
    # 400 characters of one word: estimated 100 prompt tokens, counted 7 by vLLM.
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "a" * 400}]}
    status, headers, raw = await send(gateway, key, {**body, "max_tokens": 5})
    assert status == 200
    assert headers["X-RateLimit-Remaining-Tokens-Minute"] == str(1000 - 100 - 5)
    usage = orjson.loads(raw)["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (7, 5)
    assert await tokens_left(gateway, key_id) == (1000 - 12, None)
    await assert_settled(gateway, rows=1)


async def test_default_max_tokens_is_filled_in_when_tokens_are_counted(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway, key, key_id = await limited(
        gateway_factory, clock, tokens_per_minute=1000, default_max_tokens=6
    )
    raw = orjson.dumps(EXACT)
    status, headers, _ = await post(f"{gateway.base_url}{CHAT}", raw, auth(key))
    assert status == 200
    assert headers["X-RateLimit-Remaining-Tokens-Minute"] == str(1000 - PROMPT - 6)
    [sent] = fake.behaviour.requests_to("/v1/chat/completions")
    assert sent.json == {**EXACT, "max_tokens": 6}
    # Everything the client sent goes on as its bytes; the field is added at the end.
    assert sent.body.startswith(raw[:-1])
    # A request with its own limit goes unchanged.
    own = orjson.dumps({**EXACT, "max_completion_tokens": 3})
    assert (await post(f"{gateway.base_url}{CHAT}", own, auth(key)))[0] == 200
    assert fake.behaviour.requests_to("/v1/chat/completions")[1].body == own
    assert await tokens_left(gateway, key_id) == (1000 - (PROMPT + 6) - (PROMPT + 3), None)
    await assert_settled(gateway, rows=2)


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (orjson.dumps({**EXACT, "model": "other-model"}), 403)],
)
async def test_a_refused_body_costs_no_tokens(
    gateway_factory: GatewayFactory, clock: FakeClock, body: bytes, status: int
) -> None:
    gateway: Gateway = await gateway_factory(clock=clock, tiers=tier(tokens_per_minute=100))
    key = (await gateway.create_key("alice", tier="free", allowed_models=["fake-model"]))["key"]
    got, headers, _ = await post(f"{gateway.base_url}{CHAT}", body, auth(key))
    assert got == status
    assert headers["X-RateLimit-Remaining-Tokens-Minute"] == "100"
    _, headers, _ = await send(gateway, key, {**EXACT, "max_tokens": 93})
    assert headers["X-RateLimit-Remaining-Tokens-Minute"] == "0"


def stream_body(max_tokens: int) -> dict[str, Any]:
    return {**EXACT, "max_tokens": max_tokens, "stream": True}


async def test_a_stream_past_its_max_tokens_is_cut_and_charged_what_was_relayed(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway, key, key_id = await limited(gateway_factory, clock, tokens_per_minute=1000)
    fake.behaviour.ignore_max_tokens = 40
    status, _, raw = await send(gateway, key, stream_body(5))
    assert status == 200
    events = sse_events(raw)
    relayed = sum('"content":" tok' in e for e in events)
    assert 5 <= relayed < 40
    error = orjson.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "max_tokens_exceeded"
    assert "data: [DONE]" not in events  # cut, not finished
    await fake.behaviour.wait_until(lambda: fake.behaviour.open_streams == 0)
    [row] = await assert_settled(gateway, rows=1)
    assert row["usage_source"] == "partial"
    assert row["completion_tokens"] == relayed
    assert row["prompt_tokens"] == PROMPT
    assert await tokens_left(gateway, key_id) == (1000 - PROMPT - relayed, None)


async def test_a_client_gone_mid_stream_is_charged_what_was_generated(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway, key, key_id = await limited(gateway_factory, clock, tokens_per_minute=1000)
    fake.behaviour.fail, fake.behaviour.fail_after_tokens = "stall", 4  # then silence
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.base_url}{CHAT}",
            data=orjson.dumps(stream_body(200)),
            headers=auth(key) | {"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 200
        received = b""
        while received.count(b'"content":" tok') < 4:
            chunk = await resp.content.readany()
            assert chunk, received  # the stream must not end here
            received += chunk
        resp.close()
    await fake.behaviour.wait_until(lambda: fake.behaviour.aborted == 1)
    [row] = await assert_settled(gateway, rows=1)
    assert (row["status_code"], row["usage_source"]) == (499, "partial")
    assert row["completion_tokens"] == 4
    assert await tokens_left(gateway, key_id) == (1000 - PROMPT - 4, None)


# --- every refusal kind, as the OpenAI SDK and /metrics see it -------------------------


async def refusal(gateway: Gateway, key: str, **fields: Any) -> openai.RateLimitError:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="fake-model", messages=MESSAGES, **fields)
    return caught.value


async def metric(gateway: Gateway, reason: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    line = f'llmgw_limit_refusals_total{{reason="{reason}"}} '
    found = [int(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else 0


async def test_each_refusal_is_an_openai_rate_limit_error_and_counted(
    gateway_factory: GatewayFactory, clock: FakeClock, fake: FakeVLLM
) -> None:
    gateway: Gateway = await gateway_factory(
        clock=clock,
        tiers={
            "free": TierSettings(1, 100),
            "tokens": TierSettings(100, 1000, tokens_per_minute=50),
            "concurrency": TierSettings(100, 1000, max_in_flight=1),
            # 12 spent, 3 left: less than the least a request can be lowered to (8).
            "budget": TierSettings(100, 1000, budget_tokens=15, budget_period="day"),
        },
    )
    keys = {
        name: (await gateway.create_key(name, tier=name))["key"]
        for name in ("free", "tokens", "concurrency", "budget")
    }
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=keys["free"], max_retries=0
    ) as sdk:
        await sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=1)
    seen = {"requests": await refusal(gateway, keys["free"], max_tokens=1)}
    seen["tokens"] = await refusal(gateway, keys["tokens"], max_tokens=50)
    fake.behaviour.hold = asyncio.Event()
    held = asyncio.create_task(send(gateway, keys["concurrency"], {**EXACT, "max_tokens": 1}))
    await fake.behaviour.wait_until(lambda: fake.behaviour.generating == 1)
    seen["concurrency"] = await refusal(gateway, keys["concurrency"], max_tokens=1)
    fake.behaviour.hold.set()
    assert (await held)[0] == 200
    assert (await send(gateway, keys["budget"], {**EXACT, "max_tokens": 5}))[0] == 200
    seen["budget"] = await refusal(gateway, keys["budget"], max_tokens=5)

    codes = {
        "requests": "rate_limit_exceeded",
        "tokens": "rate_limit_exceeded",
        "concurrency": "concurrency_limit_exceeded",
        "budget": "budget_exceeded",
    }
    for kind, error in seen.items():
        assert error.status_code == 429
        assert isinstance(error.body, dict)
        assert (error.body["type"], error.body["code"]) == (kind, codes[kind])
        assert await metric(gateway, kind) == 1, kind


# --- priority --------------------------------------------------------------------------


async def test_the_tiers_priority_goes_only_to_an_upstream_that_schedules_by_it(
    gateway_factory: GatewayFactory, fake: FakeVLLM, tmp_path: Path
) -> None:
    scheduling = FakeVLLM()
    await scheduling.start()
    try:
        tiers = {"free": TierSettings(100, 1000, priority=-5)}
        plain: Gateway = await gateway_factory(tiers=tiers)
        prioritised: Gateway = await gateway_factory(
            tiers=tiers,
            upstreams=(UpstreamSettings(scheduling.url, priority_scheduling=True),),
            admin=dataclasses.replace(load_settings(None).admin, socket=str(tmp_path / "2.sock")),
        )
        body = orjson.dumps({**EXACT, "max_tokens": 2})
        for gateway in (plain, prioritised):
            key = (await gateway.create_key("alice", tier="free"))["key"]
            status, _, raw = await post(f"{gateway.base_url}{CHAT}", body, auth(key))
            assert status == 200, raw
        [sent] = scheduling.behaviour.requests_to("/v1/chat/completions")
        assert sent.json == {**orjson.loads(body), "priority": -5}
        assert scheduling.behaviour.priorities == [-5]
        [unsent] = fake.behaviour.requests_to("/v1/chat/completions")
        assert unsent.body == body  # the client's bytes, no priority
        assert fake.behaviour.priorities == [0]
    finally:
        await scheduling.stop()


def test_the_exact_body_is_estimated_as_vllm_counts_it() -> None:
    assert estimate_prompt_tokens(EXACT) == count_prompt_tokens(EXACT) == PROMPT


@pytest.mark.parametrize(
    ("payload", "tokens"),
    [
        ({"messages": [{"role": "user", "content": "a" * 8}]}, 2),
        ({"messages": [{"content": [{"type": "text", "text": "a" * 9}]}]}, 3),
        ({"prompt": [1, 2, 3]}, 3),  # token ids count themselves
        ({"prompt": [[1, 2], [3, 4, 5]]}, 5),
        ({"input": ["abcd", "efgh"]}, 2),
        # Whatever the JSON, an estimate: vLLM refuses what is malformed, in its words.
        ({"messages": True}, 0),
        ({"messages": [1, None, "x"]}, 0),
        ({"prompt": {"a": 1}, "input": 7}, 0),
    ],
)
def test_the_prompt_estimate_takes_any_json(payload: dict[str, Any], tokens: int) -> None:
    assert estimate_prompt_tokens(payload) == tokens
