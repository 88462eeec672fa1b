"""The routing policies alone, on made-up loads: what each puts first, that rendezvous
hashing spreads keys, agrees across replicas and moves only a leaving server's keys, and
that bounded load never sends a key to a server more than the margin above the
least-loaded one."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from llmgw.routing import (
    PREFIX_CHARS,
    Choice,
    LeastLoaded,
    Rendezvous,
    RoundRobin,
    key_digest,
    policy,
    prefix_key,
    session_key,
    site_hash,
    weight,
)

SERVERS = [f"http://gpu{n}:8000" for n in range(4)]
KEYS = [f"team-{n} system prompt" for n in range(2000)]


def idle(*loads: float) -> list[Choice]:
    return [Choice(url, load) for url, load in zip(SERVERS, loads or [0] * 4, strict=False)]


def first(order: list[Choice]) -> str:
    return order[0].url


def test_least_loaded_puts_the_emptiest_first_and_keeps_the_rest_for_failover() -> None:
    order = LeastLoaded().order(idle(5, 1, 3, 2), None)
    assert [u.load for u in order] == [1, 2, 3, 5]


def test_round_robin_takes_each_in_turn() -> None:
    rr = RoundRobin()
    firsts = [first(rr.order(idle(), None)) for _ in range(8)]
    assert firsts == SERVERS * 2


def test_rendezvous_spreads_keys_over_the_servers() -> None:
    rendezvous = Rendezvous(margin=4)
    homes = Counter(first(rendezvous.order(idle(), key)) for key in KEYS)
    assert set(homes) == set(SERVERS)
    # 2000 keys over 4 servers: each within a fifth of its 500.
    assert all(400 <= n <= 600 for n in homes.values()), homes


def test_every_replica_agrees_where_a_key_lives() -> None:
    # Two gateways, each with its own policy object and its own upstream list order.
    one, two = Rendezvous(margin=4), Rendezvous(margin=4)
    for key in KEYS[:200]:
        assert first(one.order(idle(), key)) == first(two.order(idle()[::-1], key))


def test_a_server_leaving_moves_only_its_own_keys_and_they_come_back() -> None:
    rendezvous = Rendezvous(margin=4)
    before = {key: first(rendezvous.order(idle(), key)) for key in KEYS}
    gone = SERVERS[2]
    without = [u for u in idle() if u.url != gone]
    during = {key: first(rendezvous.order(without, key)) for key in KEYS}
    moved = {key for key in KEYS if before[key] != during[key]}
    assert moved == {key for key in KEYS if before[key] == gone}
    after = {key: first(rendezvous.order(idle(), key)) for key in KEYS}
    assert after == before  # it rejoined: its keys are back


@pytest.mark.parametrize("margin", [0, 2, 5])
def test_bounded_load_never_exceeds_the_least_loaded_by_more_than_the_margin(
    margin: float,
) -> None:
    rendezvous = Rendezvous(margin=margin)
    loads = [0.0] * 4
    for key in KEYS:  # every key a new request that stays: the worst case for a hot key
        order = rendezvous.order(
            [Choice(u, load) for u, load in zip(SERVERS, loads, strict=True)], key
        )
        chosen = SERVERS.index(first(order))
        assert loads[chosen] <= min(loads) + margin
        loads[chosen] += 1
    # And a single hot key spreads once its home is full: the same key 100 times.
    loads = [0.0] * 4
    for _ in range(100):
        order = rendezvous.order(
            [Choice(u, load) for u, load in zip(SERVERS, loads, strict=True)], KEYS[0]
        )
        chosen = SERVERS.index(first(order))
        assert loads[chosen] <= min(loads) + margin
        loads[chosen] += 1
    assert max(loads) - min(loads) <= margin + 1


def test_a_key_stays_home_while_its_home_is_within_the_margin() -> None:
    rendezvous = Rendezvous(margin=3)
    home = first(rendezvous.order(idle(), KEYS[7]))
    loads = [3.0 if url == home else 0.0 for url in SERVERS]
    order = rendezvous.order(
        [Choice(u, load) for u, load in zip(SERVERS, loads, strict=True)], KEYS[7]
    )
    assert first(order) == home
    loads = [3.5 if url == home else 0.0 for url in SERVERS]
    order = rendezvous.order(
        [Choice(u, load) for u, load in zip(SERVERS, loads, strict=True)], KEYS[7]
    )
    assert first(order) != home
    assert order[-1].url == home  # still tried, last


def test_no_key_is_least_loaded() -> None:
    assert first(Rendezvous(margin=4).order(idle(3, 2, 0, 1), None)) == SERVERS[2]


def test_weights_are_fixed_numbers() -> None:
    # Replicas (other processes, other builds) must agree: the weight is made of SHA-1 of
    # the key and blake2b of the upstream, mixed by SplitMix64, not Python's salted hash.
    digest = key_digest("k")
    assert digest == int.from_bytes(hashlib.sha1(b"k", usedforsecurity=False).digest()[:8], "big")
    site = site_hash("http://gpu0:8000")
    assert site == int.from_bytes(hashlib.blake2b(b"http://gpu0:8000", digest_size=8).digest())
    # SplitMix64's published first output for seed 0 (Vigna's splitmix64.c): the mixer
    # is the reference one.
    assert weight(0, 0) == 0xE220A8397B1DCDAF
    assert weight(digest, site) != weight(digest, site_hash("http://gpu1:8000"))
    assert key_digest("\ud800 lone") == key_digest("\ud800 lone")  # no UnicodeEncodeError


def test_policies_by_name() -> None:
    assert isinstance(policy("least-loaded"), LeastLoaded)
    assert isinstance(policy("round-robin"), RoundRobin)
    assert isinstance(policy("prefix-affinity"), Rendezvous)
    assert isinstance(policy("session"), Rendezvous)


def test_the_prefix_is_the_beginning_of_what_the_model_reads() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
        ]
    }
    assert prefix_key(chat) == "You are terse.\nHi"
    anthropic = {
        "system": [{"type": "text", "text": "Rules"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    assert prefix_key(anthropic) == "Rules\nHi"
    assert prefix_key({"instructions": "Be brief", "input": "Hi"}) == "Be brief\nHi"
    assert prefix_key({"prompt": "x" * (PREFIX_CHARS * 2)}) == "x" * PREFIX_CHARS
    assert prefix_key({"model": "m"}) is None
    # Two turns of one conversation share their prefix once it is long enough.
    system = {"role": "system", "content": "s" * PREFIX_CHARS}
    turn_one = {"messages": [system, {"role": "user", "content": "a"}]}
    turn_two = {
        "messages": [
            system,
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    }
    assert prefix_key(turn_one) == prefix_key(turn_two)


def test_the_session_is_the_header_else_the_user() -> None:
    assert session_key({"x-session-id": "abc"}, {"user": "u"}) == "abc"
    assert session_key({}, {"user": "u"}) == "u"
    assert session_key({}, {"user": 7}) is None
    assert session_key({}, {}) is None
