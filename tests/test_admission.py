"""Admission comes after the body is checked: a request refused for what it is (400,
403, 404) costs nothing, and a refused one (429) is recorded with its model."""

from __future__ import annotations

import orjson

from llmgw.fake_vllm import FakeVLLM

from .conftest import GatewayFactory, auth, post, tiers

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


async def test_requests_refused_for_their_body_cost_nothing(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(tiers=tiers(free=(2, 100)))
    key = (await gateway.create_key("alice", tier="free", allowed_models=["fake-model"]))["key"]
    url = f"{gateway.base_url}/chat/completions"
    refused = [
        (b"{not json", 400),
        (orjson.dumps({**CHAT, "stream": "yes"}), 400),
        (orjson.dumps({**CHAT, "model": "other-model"}), 403),
    ]
    for body, status in refused:
        got, headers, _ = await post(url, body, auth(key))
        assert got == status
        assert headers["X-RateLimit-Remaining-Minute"] == "2"  # what is left, untouched
    statuses = [(await post(url, orjson.dumps(CHAT), auth(key)))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(fake.behaviour.requests_to("/v1/chat/completions")) == 2


async def test_a_refused_request_is_recorded_with_its_model(
    gateway_factory: GatewayFactory, fake: FakeVLLM
) -> None:
    gateway = await gateway_factory(tiers=tiers(free=(1, 100)))
    key = (await gateway.create_key("alice", tier="free"))["key"]
    url = f"{gateway.base_url}/chat/completions"
    assert [(await post(url, orjson.dumps(CHAT), auth(key)))[0] for _ in range(2)] == [200, 429]
    rows = await gateway.ledger_rows()
    assert [(r["status_code"], r["model"]) for r in rows] == [
        (200, "fake-model"),
        (429, "fake-model"),
    ]
