"""Case 15: the two admin doors under attack.

The admin socket is private from the instant it exists, is never taken from a running
gateway, and is reclaimed from a crashed one. The remote admin API (`/admin/api` on the
public port) locks out the address that guesses passwords but not anyone else, and
refuses a token past its configured lifetime or once its user is disabled.

What tests/test_admin_socket.py and tests/test_remote_admin.py already prove (the final
0600 mode, the peer uid check as uid 65534, a stale socket replaced, a live one kept
in-process, an expired token signed with the gateway's secret, a disabled user's token,
the lockout of one client) is not repeated here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmgw.config import AdminSettings

from ..conftest import (
    LLMGW,
    FakeClock,
    Gateway,
    GatewayFactory,
    Served,
    config_file_env,
    free_port,
    run_llmgw,
    wait_healthy,
    with_secret,
)
from ..test_remote_admin import PASSWORD, SECRET, add_admin, assert_openai_error, call, login
from .conftest import assert_settled

# --- the admin socket ------------------------------------------------------------------


async def test_the_admin_socket_is_born_private(
    gateway_factory: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its mode is checked the instant `bind()` creates it, before any later chmod
    could narrow it, with the process umask at its widest (0).

    The final mode alone (tests/test_admin_socket.py) cannot tell "born 0600" from
    "born 0777, then chmod 0600": between the two, any local user could connect.
    """
    births: list[tuple[Path, int]] = []

    class Observed(socket.socket):  # the stdlib's, observed: the gateway's code is as is
        def bind(self, address: Any) -> None:
            super().bind(address)
            if self.family == socket.AF_UNIX:
                births.append((Path(address), stat.S_IMODE(os.lstat(address).st_mode)))

    path = tmp_path / "run" / "llmgw" / "admin.sock"
    with monkeypatch.context() as patch:
        patch.setattr(socket, "socket", Observed)
        umask = os.umask(0)
        try:
            gateway = await gateway_factory(admin=AdminSettings(socket=str(path)))
        finally:
            os.umask(umask)
    assert [(p.parent, mode) for p, mode in births] == [(path.parent, 0o600)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {e.name for e in path.parent.iterdir()} == {"admin.sock"}  # no temporary left
    async with gateway.admin() as admin:
        assert (await admin.health())["status"] == "ok"
    await assert_settled(gateway, rows=0)


@asynccontextmanager
async def second_gateway(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another `llmgw serve` on the same config (another port); killed if still there."""
    process = await asyncio.create_subprocess_exec(
        LLMGW, "serve", "--config", str(config), "--port", str(free_port()),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=config_file_env(),
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_gateway_process_leaves_a_live_socket_alone(
    served: Served, tmp_path: Path
) -> None:
    """The real thing, `llmgw serve` twice on one config: the second says why it cannot
    start, and the first keeps its socket (same file) and keeps answering on it."""
    sock = str(served.socket)
    created = await run_llmgw("--socket", sock, "key", "add", "--user", "alice", "--json")
    assert created.code == 0, created.stderr
    inode = served.socket.stat().st_ino

    async with second_gateway(tmp_path / "llmgw.toml") as second:
        assert second.stderr is not None
        async with asyncio.timeout(30):
            while b"cannot start" not in (line := await second.stderr.readline()):
                assert line, "the second gateway ended without saying why"
    message = line.decode()
    assert "another gateway is serving the admin socket" in message
    assert sock in message
    assert served.socket.stat().st_ino == inode
    assert stat.S_IMODE(served.socket.stat().st_mode) == 0o600
    status = await run_llmgw("--socket", sock, "status", "--json")
    assert status.code == 0, status.stderr
    assert orjson.loads(status.stdout)["health"]["status"] == "ok"
    listed = await run_llmgw("--socket", sock, "key", "list", "--json")
    assert [k["id"] for k in orjson.loads(listed.stdout)] == [orjson.loads(created.stdout)["id"]]


async def test_a_gateway_process_that_cannot_start_exits(served: Served, tmp_path: Path) -> None:
    async with second_gateway(tmp_path / "llmgw.toml") as second:
        try:
            async with asyncio.timeout(20):
                await second.wait()
        except TimeoutError:
            pytest.fail("`llmgw serve` printed its error and hung instead of exiting")
    assert second.returncode == 1


async def test_a_crashed_gateways_socket_is_reclaimed_by_the_next(
    served: Served, tmp_path: Path
) -> None:
    """`llmgw serve` killed outright (no clean-up: the socket file stays, nobody
    listens): the next `llmgw serve` on the same config takes the path over."""
    sock = str(served.socket)
    created = await run_llmgw("--socket", sock, "key", "add", "--user", "alice", "--json")
    assert created.code == 0, created.stderr
    inode = served.socket.stat().st_ino
    served.process.kill()
    await served.process.wait()
    assert stat.S_ISSOCK(served.socket.lstat().st_mode)

    with (tmp_path / "next.log").open("wb") as log:
        following = await asyncio.create_subprocess_exec(
            LLMGW, "serve", "--config", str(tmp_path / "llmgw.toml"),
            stdout=log, stderr=log, env=config_file_env(),
        )  # fmt: skip
    try:
        await wait_healthy(served.url)
        assert served.socket.stat().st_ino != inode
        assert stat.S_IMODE(served.socket.stat().st_mode) == 0o600
        listed = await run_llmgw("--socket", sock, "key", "list", "--json")
        assert listed.code == 0, listed.stderr
        ids = [k["id"] for k in orjson.loads(listed.stdout)]
        assert ids == [orjson.loads(created.stdout)["id"]]
        following.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await following.wait() == 0
        assert not served.socket.exists()  # and this one cleans up after itself
    finally:
        if following.returncode is None:
            following.kill()
            await following.wait()


# --- the remote admin API --------------------------------------------------------------


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    parsed: dict[str, Any] = orjson.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return parsed


async def test_a_token_is_refused_from_its_configured_expiry_on(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    ttl = 4.0
    gateway: Gateway = await gateway_factory(
        admin=dataclasses.replace(with_secret(SECRET), token_ttl=ttl), clock=clock
    )
    await add_admin(gateway)
    status, answer = await login(http, gateway)
    assert (status, answer["expires_in"]) == (200, int(ttl))
    token = answer["access_token"]
    expires = claims(token)["exp"]
    assert expires - claims(token)["iat"] == pytest.approx(ttl)
    assert (await call(http, gateway, "GET", "/keys", token))[0] == 200
    # Not refused before its time, refused from it on (claims are rounded to the ms).
    clock.advance(expires - clock.wall() - 0.01)
    assert (await call(http, gateway, "GET", "/keys", token))[0] == 200
    clock.advance(0.01)
    assert clock.wall() >= expires
    result = await call(http, gateway, "GET", "/keys", token)
    status, body = result
    assert status == 401
    assert "expired" in assert_openai_error(body, "invalid_token")
    status, fresh = await login(http, gateway)  # the user is fine: only that token ended
    assert status == 200
    assert (await call(http, gateway, "GET", "/keys", fresh["access_token"]))[0] == 200
    await assert_settled(gateway, rows=0)


async def test_a_token_stays_dead_after_its_user_is_enabled_again(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET))
    await add_admin(gateway)
    _, answer = await login(http, gateway)
    token = answer["access_token"]
    async with gateway.admin() as admin:
        await admin.update_admin("root-admin", is_active=False)
        assert (await call(http, gateway, "GET", "/keys", token))[0] == 401
        await admin.update_admin("root-admin", is_active=True)
    status, body = await call(http, gateway, "GET", "/keys", token)
    assert status == 401, "the token of a disabled user works again once it is enabled"
    assert_openai_error(body, "invalid_token")
    await assert_settled(gateway, rows=0)


async def test_failed_logins_lock_out_their_address_and_no_other(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Two clients on the real port, from 127.0.0.1 and 127.0.0.2: the one guessing
    (at several usernames) is locked out, right password included; the other logs in,
    works and may mistype once without being locked out."""
    gateway: Gateway = await gateway_factory(admin=with_secret(SECRET))
    await add_admin(gateway)
    guesses = [("root-admin", "guess one!!!!"), ("admin", PASSWORD), ("root", "x"),
               ("root-admin", "guess two!!!!"), ("ops", "guess three!!")]  # fmt: skip
    assert [(await login(http, gateway, u, p))[0] for u, p in guesses] == [401] * 5
    status, body = await login(http, gateway)
    assert status == 429
    assert_openai_error(body, "login_throttled")

    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as colleague:
        assert (await login(colleague, gateway, "root-admin", "mistyped once"))[0] == 401
        status, answer = await login(colleague, gateway)
        assert status == 200
        token = answer["access_token"]
        status, _ = await call(colleague, gateway, "POST", "/keys", token, json={"user_id": "x"})
        assert status == 201

    async with http.post(
        f"{gateway.url}/admin/api/login", json={"username": "root-admin", "password": PASSWORD}
    ) as resp:
        assert resp.status == 429  # still: the colleague's success is not the guesser's
        assert 0 < int(resp.headers["Retry-After"]) <= 300
    async with gateway.admin() as admin:
        [created] = await admin.audit(action="key.create")
    assert created["door"] == "remote:127.0.0.2"  # the colleague was a different address
    await assert_settled(gateway, rows=0)
