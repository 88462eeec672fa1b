"""Issue 12, item 5: login throttling of the remote admin API.

Failed logins used to be counted per peer address only. Behind the documented nginx
everyone shares nginx's address, so five wrong passwords locked every admin out, again
and again; and 30 source addresses made 150 guesses in 26 s, unthrottled. Now a
username is locked, from every address, with a doubling wait once it has failed five
times in a row, and behind a proxy in `[admin] trusted_proxies` the address counted
(and written to the audit log and the access line) is the client's from
`X-Forwarded-For`.

The throttle runs on an injected clock: alone, and in a real gateway, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import aiohttp
import pytest

from llmgw.admin.remote import Lockout, LoginThrottle
from llmgw.client_address import TrustedProxies
from llmgw.config import ConfigError, load_settings

from ..conftest import FakeClock, Gateway, GatewayFactory, with_secret
from ..test_remote_admin import PASSWORD, SECRET, add_admin, assert_openai_error
from .conftest import assert_settled

# --- the throttle alone ----------------------------------------------------------------

LOCKS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_a_username_is_locked_for_doubling_times_from_every_address(clock: FakeClock) -> None:
    throttle = LoginThrottle(clock)
    addresses = (f"10.0.{i // 250}.{i % 250}" for i in range(1000))  # a new one each time
    assert [throttle.attempt(next(addresses), "root-admin") for _ in range(5)] == [None] * 5
    for lock in LOCKS:
        refused = throttle.attempt(next(addresses), "root-admin")
        assert refused == Lockout("for this username", lock)
        clock.advance(lock - 0.5)  # (halves: the fake clock's sums stay exact)
        assert throttle.attempt(next(addresses), "root-admin") is not None
        clock.advance(0.5)
        assert throttle.attempt(next(addresses), "root-admin") is None  # one more guess
    # Refused attempts cost nothing and prove nothing: the lock does not grow with them.
    for _ in range(100):
        assert throttle.attempt(next(addresses), "root-admin") == Lockout("for this username", 300)
    assert throttle.attempt(next(addresses), "ops-admin") is None  # another user is not touched


def test_a_success_resets_the_username(clock: FakeClock) -> None:
    throttle = LoginThrottle(clock)
    for _ in range(7):
        clock.advance(300)
        assert throttle.attempt("10.0.0.1", "root-admin") is None
    clock.advance(300)
    assert throttle.attempt("10.0.0.2", "root-admin") is None  # (the right password)
    throttle.succeeded("10.0.0.2", "root-admin")
    assert [throttle.attempt("10.0.0.3", "root-admin") for _ in range(5)] == [None] * 5
    assert throttle.attempt("10.0.0.4", "root-admin") == Lockout("for this username", 1)


def test_an_address_is_locked_for_its_window_whatever_usernames_it_tries(
    clock: FakeClock,
) -> None:
    throttle = LoginThrottle(clock)
    for name in ("admin", "root", "ops", "root-admin", "x"):
        assert throttle.attempt("10.0.0.66", name) is None
        clock.advance(10)
    assert throttle.attempt("10.0.0.66", "y") == Lockout("from this address", 250)
    assert throttle.attempt("10.0.0.7", "y") is None  # another address is not touched
    clock.advance(249.5)
    assert throttle.attempt("10.0.0.66", "z") is not None
    clock.advance(0.5)  # the first failure is 300 s old
    assert throttle.attempt("10.0.0.66", "z") is None


def test_the_throttle_numbers_are_parameters(clock: FakeClock) -> None:
    throttle = LoginThrottle(clock, address_limit=100, username_limit=2, first_lock=10, max_lock=25)
    assert [throttle.attempt("a", "u") for _ in range(2)] == [None, None]
    assert throttle.attempt("a", "u") == Lockout("for this username", 10)
    clock.advance(10)
    assert throttle.attempt("a", "u") is None
    assert throttle.attempt("a", "u") == Lockout("for this username", 20)
    clock.advance(20)
    assert throttle.attempt("a", "u") is None
    assert throttle.attempt("a", "u") == Lockout("for this username", 25)


def test_memory_is_bounded_whoever_is_asking(clock: FakeClock) -> None:
    throttle = LoginThrottle(clock, capacity=100)
    for i in range(5000):
        throttle.attempt(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user-{i}")
    assert len(throttle) == 200  # 100 addresses and 100 usernames
    # A username is counted under its first 100 characters: long guesses share a count.
    long_names = ["x" * 100 + str(i) * 10_000 for i in range(6)]
    assert [throttle.attempt(f"10.9.9.{i}", n) for i, n in enumerate(long_names[:5])] == [None] * 5
    assert throttle.attempt("10.9.9.9", long_names[5]) == Lockout("for this username", 1)


# --- X-Forwarded-For -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "client"),
    [
        ((), "127.0.0.1", ["10.0.0.66"], "127.0.0.1"),  # no trusted proxy: ignored
        (("127.0.0.1",), "127.0.0.2", ["10.0.0.66"], "127.0.0.2"),  # peer not trusted
        (("127.0.0.1",), "127.0.0.1", [], "127.0.0.1"),
        (("127.0.0.1",), "127.0.0.1", ["10.0.0.66"], "10.0.0.66"),
        (("127.0.0.1",), "127.0.0.1", ["6.6.6.6, 10.0.0.66"], "10.0.0.66"),  # left: the client's
        (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", ["6.6.6.6, 1.2.3.4,10.0.0.5"], "1.2.3.4"),
        (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", ["1.2.3.4", "10.0.0.5"], "1.2.3.4"),
        (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", ["10.0.0.9, 10.0.0.5"], "10.0.0.9"),
        (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", ["1.2.3.4, junk, 10.0.0.5"], "10.0.0.5"),
        (("127.0.0.1",), "127.0.0.1", ["10.0.0.66, "], "127.0.0.1"),  # malformed: the peer
        (("127.0.0.1",), "127.0.0.1", ["10.0.0.66:4321"], "127.0.0.1"),
        (("127.0.0.1",), "::ffff:127.0.0.1", ["10.0.0.66"], "10.0.0.66"),  # dual-stack peer
        (("::1", "fd00::/8"), "::1", ["2001:db8::7, fd00::1"], "2001:db8::7"),
    ],
)
def test_the_client_is_the_first_untrusted_address_from_the_right(
    trusted: tuple[str, ...], peer: str, forwarded_for: list[str], client: str
) -> None:
    assert TrustedProxies(trusted).client(peer, forwarded_for) == client


def test_trusted_proxies_come_from_the_config_and_are_checked_at_start() -> None:
    env = {"LLMGW_ADMIN_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"}
    assert load_settings(None, env).admin.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert load_settings(None, {}).admin.trusted_proxies == ()
    for bad in ("nginx", "10.0.0.1/8", "127.0.0.1,300.0.0.1"):
        with pytest.raises(ConfigError, match=r"\[admin\] trusted_proxies: '.*' is not an IP"):
            load_settings(None, {"LLMGW_ADMIN_TRUSTED_PROXIES": bad})


# --- through the real remote admin API --------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None


async def try_login(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    username: str = "root-admin",
    password: str = PASSWORD,
    forwarded_for: str | None = None,
) -> Answer:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    async with http.post(
        f"{gateway.url}/admin/api/login",
        json={"username": username, "password": password},
        headers=headers,
    ) as resp:
        retry_after = resp.headers.get("Retry-After")
        return Answer(
            resp.status, await resp.json(), None if retry_after is None else int(retry_after)
        )


def throttled(answer: Answer, reason: str, retry_after: int) -> None:
    assert answer.status == 429, answer
    assert reason in assert_openai_error(answer.body, "login_throttled")
    assert answer.retry_after == retry_after


async def create_key_as(
    http: aiohttp.ClientSession, gateway: Gateway, token: str, **headers: str
) -> None:
    async with http.post(
        f"{gateway.url}/admin/api/keys",
        json={"user_id": "x"},
        headers={"Authorization": f"Bearer {token}", **headers},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def doors(gateway: Gateway) -> list[str]:
    async with gateway.admin() as admin:
        return [row["door"] for row in await admin.audit(action="key.create")]


def peer(address: str) -> aiohttp.ClientSession:
    """A client session whose connections come from `address` (any of 127/8)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_behind_a_trusted_proxy_the_guesser_is_locked_out_and_the_admin_is_not(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """nginx on 127.0.0.1 forwards both: the guesser (10.0.0.66) is refused after five
    failures, right password included; the admin (10.0.0.7) logs in and the audit log
    names the admin's address. A peer that is not a trusted proxy is not believed."""
    admin = dataclasses.replace(with_secret(SECRET), trusted_proxies=("127.0.0.1",))
    gateway: Gateway = await gateway_factory(admin=admin, clock=clock)
    await add_admin(gateway)
    for name in ("admin", "root", "ops", "root-admin", "administrator"):
        answer = await try_login(http, gateway, name, "guess!", forwarded_for="10.0.0.66")
        assert answer.status == 401, answer
    throttled(await try_login(http, gateway, forwarded_for="10.0.0.66"), "from this address", 300)
    # What the guesser writes left of what nginx appends is not believed either.
    spoofed = await try_login(http, gateway, forwarded_for="10.0.0.7, 10.0.0.66")
    throttled(spoofed, "from this address", 300)

    answer = await try_login(http, gateway, forwarded_for="10.0.0.7")
    assert answer.status == 200, answer
    token = answer.body["access_token"]
    await create_key_as(http, gateway, token, **{"X-Forwarded-For": "10.0.0.7"})
    async with peer("127.0.0.2") as other:  # not a trusted proxy: its header is its own
        await create_key_as(other, gateway, token, **{"X-Forwarded-For": "10.0.0.8"})
    assert await doors(gateway) == ["remote:127.0.0.2", "remote:10.0.0.7"]  # newest first
    await assert_settled(gateway, rows=0)


async def test_thirty_addresses_guessing_at_one_user_get_five_guesses(
    gateway_factory: GatewayFactory, clock: FakeClock
) -> None:
    """The probe's attack from 30 real source addresses (127.0.0.2 to .31), no proxy:
    five guesses, then the user is locked from everywhere, with a doubling wait, and
    even the right password is refused (unchecked) until the lock ends."""
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET), clock=clock)
    await add_admin(gateway)
    statuses = []
    for i in range(2, 32):
        async with peer(f"127.0.0.{i}") as guesser:
            statuses.append((await try_login(guesser, gateway, password=f"guess {i}")).status)
    assert statuses == [401] * 5 + [429] * 25
    async with peer("127.0.0.40") as admin_session:
        throttled(await try_login(admin_session, gateway), "for this username", 1)
        for wait in (1, 2, 4):
            clock.advance(wait)
            assert (await try_login(admin_session, gateway, password="one more")).status == 401
            throttled(await try_login(admin_session, gateway), "for this username", wait * 2)
        clock.advance(8)
        assert (await try_login(admin_session, gateway)).status == 200  # and reset:
        assert (await try_login(admin_session, gateway, password="mistyped")).status == 401
        assert (await try_login(admin_session, gateway)).status == 200
    await assert_settled(gateway, rows=0)


async def test_concurrent_guesses_are_held_to_the_limit(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Twenty guesses at once, from twenty addresses behind the proxy: an attempt counts
    from the moment its password check starts, not once it has failed."""
    admin = dataclasses.replace(with_secret(SECRET), trusted_proxies=("127.0.0.1",))
    gateway: Gateway = await gateway_factory(admin=admin, clock=clock)
    await add_admin(gateway)
    answers = await asyncio.gather(
        *(
            try_login(http, gateway, password=f"guess {i}", forwarded_for=f"10.0.1.{i}")
            for i in range(20)
        )
    )
    assert sorted(a.status for a in answers) == [401] * 5 + [429] * 15
    await assert_settled(gateway, rows=0)


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET), clock=clock)
    await add_admin(gateway)
    for i, name in enumerate(("admin", "root", "ops", "root-admin", "administrator")):
        answer = await try_login(http, gateway, name, "guess!", forwarded_for=f"10.0.0.{i}")
        assert answer.status == 401, answer
    throttled(await try_login(http, gateway, forwarded_for="10.0.0.7"), "from this address", 300)
    async with peer("127.0.0.2") as other:
        answer = await try_login(other, gateway, forwarded_for="10.0.0.7")
        assert answer.status == 200, answer
        await create_key_as(
            other, gateway, answer.body["access_token"], **{"X-Forwarded-For": "10.0.0.7"}
        )
    assert await doors(gateway) == ["remote:127.0.0.2"]
    await assert_settled(gateway, rows=0)


async def test_the_access_line_names_the_forwarded_client_only_from_a_trusted_proxy(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmgw.access")
    admin = dataclasses.replace(with_secret(SECRET), trusted_proxies=("127.0.0.1",))
    gateway: Gateway = await gateway_factory(admin=admin)
    forwarded = {"X-Forwarded-For": "6.6.6.6, 10.0.0.7"}
    async with http.get(f"{gateway.url}/v1/models", headers=forwarded) as resp:
        assert resp.status == 401
    async with (
        peer("127.0.0.2") as other,
        other.get(f"{gateway.url}/v1/models", headers=forwarded) as resp,
    ):
        assert resp.status == 401
    await gateway.flush_ledger()
    access = [getattr(r, "fields", {}) for r in caplog.records if r.name == "llmgw.access"]
    clients = [fields["client"] for fields in access if fields["path"] == "/v1/models"]
    assert clients == ["10.0.0.7", "127.0.0.2"]
    await assert_settled(gateway, rows=0)
