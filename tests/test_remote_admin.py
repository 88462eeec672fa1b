"""The remote door: `/admin/api` on the public port, the seed's admin API, behind login."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from llmgw import tokens

from .conftest import Gateway, GatewayFactory, with_secret

pytestmark = pytest.mark.both_databases

SECRET = "a-test-secret-of-enough-length"
PASSWORD = "correct horse battery staple"


@pytest.fixture
async def remote(gateway_factory: GatewayFactory) -> Gateway:
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET))
    return gateway


async def add_admin(gateway: Gateway, username: str = "root-admin") -> None:
    async with gateway.admin() as admin:
        await admin.add_admin(username, PASSWORD, "ops@example.com")


async def login(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    username: str = "root-admin",
    password: str = PASSWORD,
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{gateway.url}/admin/api/login", json={"username": username, "password": password}
    ) as resp:
        return resp.status, await resp.json()


async def call(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    method: str,
    path: str,
    token: str | None,
    **kw: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(
        method, f"{gateway.url}/admin/api{path}", headers=headers, **kw
    ) as resp:
        return resp.status, await resp.json()


def assert_openai_error(body: Any, code: str) -> str:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def test_without_an_admin_user_everything_is_refused_with_directions(
    remote: Gateway, http: aiohttp.ClientSession
) -> None:
    status, body = await login(http, remote, "admin", "admin123")  # the seed's default
    assert status == 401
    assert "llmgw admin add" in assert_openai_error(body, "no_admin_user")
    status, body = await call(http, remote, "GET", "/keys", None)
    assert status == 401
    assert "llmgw admin add" in assert_openai_error(body, "no_admin_user")


async def test_the_seeds_admin_api_end_to_end(remote: Gateway, http: aiohttp.ClientSession) -> None:
    await add_admin(remote)
    status, answer = await login(http, remote)
    assert status == 200
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 3600
    token = answer["access_token"]

    # POST /admin/api/keys, as in the seed's README.
    body = {"user_id": "dev-team", "tier": "premium", "description": "Development team key"}
    status, created = await call(http, remote, "POST", "/keys", token, json=body)
    assert status == 201
    assert created["key"].startswith("sk-internal-")
    status, listing = await call(http, remote, "GET", "/keys", token)
    assert status == 200
    assert [k["id"] for k in listing["data"]] == [created["id"]]
    assert "key" not in listing["data"][0]

    # The new key works on the public API...
    headers = {"Authorization": f"Bearer {created['key']}"}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with http.post(f"{remote.base_url}/chat/completions", json=chat, headers=headers) as r:
        assert r.status == 200

    # ...PUT changes it, DELETE removes it, and the next request is refused.
    status, updated = await call(
        http, remote, "PUT", f"/keys/{created['id']}", token, json={"tier": "free"}
    )
    assert (status, updated["tier"]) == (200, "free")
    # GET /admin/api/usage?days=7, as in the seed's README: the one request above.
    await remote.flush_ledger()
    status, usage = await call(http, remote, "GET", "/usage?days=7", token)
    assert status == 200
    assert [(g["group"], g["requests"]) for g in usage["data"]] == [("dev-team", 1)]
    status, deleted = await call(http, remote, "DELETE", f"/keys/{created['id']}", token)
    assert (status, deleted["deleted"]) == (200, True)
    async with http.post(f"{remote.base_url}/chat/completions", json=chat, headers=headers) as r:
        assert r.status == 401

    # Each change is audited as made by this admin, through the remote door.
    audit = await remote.rows("SELECT * FROM audit_log ORDER BY id")
    remote_rows = [r for r in audit if r["door"].startswith("remote:")]
    assert [r["action"] for r in remote_rows] == ["key.create", "key.update", "key.delete"]
    assert {r["actor"] for r in remote_rows} == {"admin:root-admin"}


@pytest.mark.parametrize(
    ("username", "password"), [("root-admin", "wrong password!!"), ("nobody", PASSWORD)]
)
async def test_wrong_credentials_are_401(
    remote: Gateway, http: aiohttp.ClientSession, username: str, password: str
) -> None:
    await add_admin(remote)
    status, body = await login(http, remote, username, password)
    assert status == 401
    message = assert_openai_error(body, "invalid_credentials")
    assert password not in message


async def test_bad_tokens_are_401(remote: Gateway, http: aiohttp.ClientSession) -> None:
    await add_admin(remote)
    now = time.time()
    expired = tokens.issue(SECRET.encode(), "root-admin", now - 7200, 3600)
    forged = tokens.issue(b"another secret", "root-admin", now, 3600)
    for token, why in ((expired, "expired"), (forged, "signature"), ("garbage", "malformed")):
        status, body = await call(http, remote, "GET", "/keys", token)
        assert status == 401
        assert why in assert_openai_error(body, "invalid_token")
    status, body = await call(http, remote, "GET", "/keys", None)
    assert status == 401
    assert_openai_error(body, "missing_token")


async def test_a_token_dies_with_its_users_password_or_account(
    remote: Gateway, http: aiohttp.ClientSession
) -> None:
    await add_admin(remote, "alice-admin")
    await add_admin(remote, "bob-admin")
    _, alice = await login(http, remote, "alice-admin")
    _, bob = await login(http, remote, "bob-admin")
    assert (await call(http, remote, "GET", "/keys", alice["access_token"]))[0] == 200

    async with remote.admin() as admin:
        await admin.update_admin("alice-admin", is_active=False)
        await admin.update_admin("bob-admin", password="a brand new password")
    status, body = await call(http, remote, "GET", "/keys", alice["access_token"])
    assert status == 401
    assert "disabled" in assert_openai_error(body, "invalid_token")
    status, body = await call(http, remote, "GET", "/keys", bob["access_token"])
    assert status == 401
    assert "password has changed" in assert_openai_error(body, "invalid_token")
    assert (await login(http, remote, "alice-admin"))[0] == 401
    status, fresh = await login(http, remote, "bob-admin", "a brand new password")
    assert status == 200
    assert (await call(http, remote, "GET", "/keys", fresh["access_token"]))[0] == 200


async def test_repeated_failed_logins_are_refused_per_client(
    remote: Gateway, http: aiohttp.ClientSession
) -> None:
    await add_admin(remote)
    statuses = [(await login(http, remote, "root-admin", "not the password"))[0] for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # Even the right password is refused now, from this address, with a wait to honour.
    async with http.post(
        f"{remote.url}/admin/api/login", json={"username": "root-admin", "password": PASSWORD}
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0
        assert_openai_error(await resp.json(), "login_throttled")


async def test_public_keys_do_not_open_the_admin_api(
    remote: Gateway, http: aiohttp.ClientSession
) -> None:
    await add_admin(remote)
    api_key = (await remote.create_key("eve"))["key"]
    status, body = await call(http, remote, "GET", "/keys", api_key)
    assert status == 401
    assert_openai_error(body, "invalid_token")
