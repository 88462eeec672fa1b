"""Case 14: a key is found by its digest alone, never compared as plaintext, and an
unknown key costs the same work however much of a real key it gets right.

The gateway keeps only SHA-256 digests (`api_keys.key_hash`, unique) and authenticates
with one lookup of the presented key's digest in its in-memory `KeyTable`.
"""

from __future__ import annotations

import contextlib
import pickle
import secrets
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from llmgw import keys
from llmgw.errors import GatewayError
from llmgw.keys import KEY_PREFIX, KeyTable, hash_key
from llmgw.state import KEYS

from ..conftest import Gateway, post_chat, read_rows
from .conftest import assert_settled

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def near_misses(key: str) -> Iterator[str]:
    """Unknown keys that get more and more of `key` right, and some that get none."""
    for shared in (0, len(KEY_PREFIX), 20, 40, len(key) - 1):
        wrong = "A" if key[shared] != "A" else "B"  # the first character not shared
        yield key[:shared] + wrong + secrets.token_urlsafe(64)[: len(key) - shared - 1]
    yield key[:-1]  # one character short
    yield key + "A"  # one too many
    yield "sk-internal-" + "A" * 43
    yield "x"


async def test_the_key_hash_column_is_unique(gateway: Gateway) -> None:
    """In the database a gateway made: the schema says so, and SQLite enforces it."""
    created = await gateway.create_key("alice")
    path = gateway.settings.database_path
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db, db:
        unique = [
            [column for _, _, column in db.execute(f"PRAGMA index_info('{name}')")]
            for _, name, is_unique, *_ in db.execute("PRAGMA index_list('api_keys')")
            if is_unique
        ]
        assert ["key_hash"] in unique
        [(key_hash,)] = db.execute("SELECT key_hash FROM api_keys WHERE id = ?", (created["id"],))
        assert key_hash == hash_key(created["key"])
        with pytest.raises(
            sqlite3.IntegrityError, match=r"UNIQUE constraint failed: api_keys\.key_hash"
        ):
            db.execute(
                "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, created_at, updated_at)"
                " VALUES (?, 'sk-internal-dupe', 'mallory', 'free', '2026-01-01', '2026-01-01')",
                (key_hash,),
            )
    rows = read_rows(path, "SELECT user_id FROM api_keys")
    assert rows == [{"user_id": "alice"}]
    async with aiohttp.ClientSession() as http:
        assert await post_chat(http, gateway, created["key"], CHAT) == 200
    await assert_settled(gateway, rows=1)


async def test_the_key_table_holds_digests_not_keys(gateway: Gateway) -> None:
    created = [await gateway.create_key(user) for user in ("alice", "bob", "carol")]
    async with gateway.admin() as admin:
        rotated = await admin.rotate_key(created[1]["id"])
    live = [created[0]["key"], rotated["key"], created[2]["key"]]
    # Everything the table holds, whatever its layout: a pickle walks every object in it.
    held = pickle.dumps(gateway.app[KEYS])
    for key in live:
        assert hash_key(key).encode() in held  # the walk does reach the keys
    for key in [*live, created[1]["key"]]:
        for part in (key, key[12:32], key[-20:]):
            assert part.encode() not in held
    assert hash_key(created[1]["key"]).encode() not in held  # rotated away
    await assert_settled(gateway, rows=0)


async def test_a_key_is_found_by_its_digest_alone(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two plaintexts with one digest are one key; the right plaintext under another
    digest is no key.

    No real SHA-256 collision is at hand, so `llmgw.keys.hash_key` is replaced (after
    the keys were made with the real one) by a function that sends one impostor string
    to the real key's digest and the real key elsewhere. If authentication looked at
    the plaintext at all (compared it, checked its prefix or length), the impostor,
    which shares nothing with the key, would be refused.
    """
    created = await gateway.create_key("alice")
    real_key, real_hash = created["key"], keys.hash_key
    impostor = "not-a-key-at-all"
    seen: list[str] = []

    def forced(presented: str) -> str:
        seen.append(presented)
        if presented == impostor:
            return real_hash(real_key)
        if presented == real_key:
            return real_hash("something else")
        return real_hash(presented)

    monkeypatch.setattr(keys, "hash_key", forced)
    async with aiohttp.ClientSession() as http:
        assert await post_chat(http, gateway, impostor, CHAT) == 200
        async with http.post(
            f"{gateway.base_url}/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {real_key}"},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert seen == [impostor, real_key]  # each presented key hashed whole, once
    [row] = await assert_settled(gateway, rows=1)
    assert (row["api_key_id"], row["user_id"], row["status_code"]) == (created["id"], "alice", 200)


class Watched(str):
    """A presented key that notes everything the code under test does with it."""

    ops: list[str]

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name != "ops":  # a str method: upper, encode, ...
            str.__getattribute__(self, "ops").append(name)
        return str.__getattribute__(self, name)

    def _note(self, op: str) -> None:
        str.__getattribute__(self, "ops").append(op)

    def __len__(self) -> int:
        self._note("__len__")
        return str.__len__(self)

    def __eq__(self, other: object) -> bool:
        self._note("__eq__")
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._note("__ne__")
        return str.__ne__(self, other)

    def __hash__(self) -> int:
        self._note("__hash__")
        return str.__hash__(self)

    def __getitem__(self, index: Any) -> str:
        self._note("__getitem__")
        return str.__getitem__(self, index)

    def __contains__(self, part: object) -> bool:
        self._note("__contains__")
        return str.__contains__(self, part)  # type: ignore[operator]

    def __iter__(self) -> Iterator[str]:
        self._note("__iter__")
        return str.__iter__(self)

    def __lt__(self, other: str) -> bool:
        self._note("__lt__")
        return str.__lt__(self, other)

    def __str__(self) -> str:
        self._note("__str__")
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        self._note("__format__")
        return str.__format__(self, spec)


def watched(text: str) -> Watched:
    key = Watched(text)
    key.ops = []
    return key


class Lookups(dict[str, Any]):
    """The table's digest index, noting every way it is read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[tuple[str, Any]] = []

    def get(self, key: Any, default: Any = None) -> Any:
        self.reads.append(("get", key))
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.reads.append(("__getitem__", key))
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.reads.append(("__contains__", key))
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.reads.append(("__iter__", None))
        return super().__iter__()

    def items(self) -> Any:
        self.reads.append(("items", None))
        return super().items()

    def values(self) -> Any:
        self.reads.append(("values", None))
        return super().values()

    def keys(self) -> Any:
        self.reads.append(("keys", None))
        return super().keys()


async def test_an_unknown_key_costs_the_same_however_close_it_is(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant time with respect to the key's contents, shown by counting, not timing.

    A wall-clock comparison would have to resolve a few nanoseconds on a shared 2-core
    machine: flaky, or so lenient it proves nothing. Instead this test watches the work
    itself, on the gateway's live table. For an unknown key that shares 0, 12, 20, 40
    or all but one of its characters with a real key (and some of other lengths), the
    only things done with the presented key are taking its length and encoding it
    whole for SHA-256 (which reads every byte whatever they are), and the table is read
    exactly once, at that digest. A digest is unrelated to how much of the key was
    right, so that one lookup (string hash, then at most a comparison of 64 hex
    digits) cannot tell an attacker anything either. The answer is the same too.
    """
    for user in ("alice", "bob", "carol"):
        await gateway.create_key(user)
    real = (await gateway.create_key("dave"))["key"]
    table: KeyTable = gateway.app[KEYS]
    index = Lookups(table._by_hash)  # the one private reach: the table's digest index
    monkeypatch.setattr(table, "_by_hash", index)

    answers = set()
    for candidate in near_misses(real):
        presented = watched(candidate)
        index.reads.clear()
        with pytest.raises(GatewayError) as refused:
            table.authenticate(presented, 0.0)
        assert presented.ops == ["__len__", "encode"], candidate
        assert index.reads == [("get", hash_key(candidate))], candidate
        answers.add((refused.value.status, refused.value.message))
    assert answers == {(401, "Incorrect API key provided.")}

    # The watch sees what it should: the real key is found by the same steps.
    presented = watched(real)
    assert table.authenticate(presented, 0.0).user_id == "dave"
    assert presented.ops == ["__len__", "encode"]

    # And over HTTP: the same refusal, byte for byte, for every near miss.
    bodies = set()
    async with aiohttp.ClientSession() as http:
        for candidate in near_misses(real):
            async with http.get(
                f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {candidate}"}
            ) as resp:
                bodies.add((resp.status, await resp.read()))
    assert len(bodies) == 1
    [(status, _)] = bodies
    assert status == 401
    await assert_settled(gateway, rows=0)
