"""The admin Unix socket: private, checked per peer, never stolen, cleaned up.

Peer checks run a real client as another uid (nobody, 65534) in a subprocess. The
gateway lives in this test's event loop, so such a client is always started with
`asyncio.create_subprocess_exec` and awaited, never with a blocking `subprocess.run`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmgw.admin_client import AdminApiError
from llmgw.admin_socket import AdminSocketError, bind_admin_socket, remove_admin_socket
from llmgw.app import create_app
from llmgw.config import AdminSettings
from llmgw.fake_vllm import FakeVLLM

from .conftest import Gateway, GatewayFactory, make_settings

pytestmark = pytest.mark.both_databases

NOBODY = 65534
# A stdlib-only HTTP client over a Unix socket, for a python that nobody may run.
UNIX_GET = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
conn = Unix("llmgw", timeout=10)
conn.request(sys.argv[2], sys.argv[3], body=sys.argv[4] if len(sys.argv) > 4 else None,
             headers={"Content-Type": "application/json"})
resp = conn.getresponse()
sys.stdout.write(str(resp.status) + "\\n" + resp.read().decode())
"""


def system_python() -> str:
    """A python outside /root (where the venv's interpreter lives), so nobody can run it."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other uids may traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="llmgw-admin-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def unix_http(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=str(gateway.socket_path))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def as_nobody(
    socket_path: Path, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """Call the admin API as uid 65534; the status and the JSON body."""
    args = [str(socket_path), method, path]
    if body is not None:
        args.append(orjson.dumps(body).decode())
    proc = await asyncio.create_subprocess_exec(
        system_python(),
        "-I",
        "-c",
        UNIX_GET,
        *args,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    status, _, text = out.decode().partition("\n")
    return int(status), orjson.loads(text)


def assert_openai_error(body: dict[str, Any], code: str | None) -> dict[str, Any]:
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


async def start_with_socket(gateway_factory: GatewayFactory, path: Path, **admin: Any) -> Gateway:
    gateway: Gateway = await gateway_factory(admin=AdminSettings(socket=str(path), **admin))
    return gateway


# --- the socket file -----------------------------------------------------------------


async def test_socket_is_created_private(gateway: Gateway) -> None:
    info = os.stat(gateway.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    async with gateway.admin() as admin:
        assert (await admin.health())["status"] == "ok"


def test_bind_creates_a_private_socket_and_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "llmgw" / "admin.sock"
    umask = os.umask(0o022)
    try:
        sock, inode = bind_admin_socket(path)
        assert os.umask(0o022) == 0o022, "bind_admin_socket must restore the umask"
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.stat().st_ino == inode
        assert [p.name for p in path.parent.iterdir()] == ["admin.sock"]  # no temporary left
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # it listens
    finally:
        sock.close()
        remove_admin_socket(path, inode)
    assert not path.exists()


def test_remove_leaves_a_socket_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    sock, inode = bind_admin_socket(path)
    sock.close()
    # Moved away, not deleted, so the successor cannot get the same inode number.
    path.rename(tmp_path / "moved.sock")
    successor, successor_inode = bind_admin_socket(path)  # another gateway took the path
    assert successor_inode != inode
    try:
        remove_admin_socket(path, inode)
        assert path.exists()
        assert path.stat().st_ino == successor_inode
    finally:
        successor.close()
        remove_admin_socket(path, successor_inode)
    assert not path.exists()


def test_a_regular_file_at_the_path_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    path.write_text("someone's notes\n")
    with pytest.raises(AdminSocketError, match="not a socket"):
        bind_admin_socket(path)
    assert path.read_text() == "someone's notes\n"


async def test_a_regular_file_at_the_path_stops_the_gateway(fake: FakeVLLM, tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    path.write_text("keep me\n")
    settings = make_settings(fake.url, admin=AdminSettings(socket=str(path)))
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(AdminSocketError, match=str(path)):
            await runner.setup()
    finally:
        await runner.cleanup()
    assert path.read_text() == "keep me\n"


async def test_a_stale_socket_is_replaced(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    path = tmp_path / "sock" / "admin.sock"
    path.parent.mkdir(mode=0o700)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # a crashed gateway: the file stays, nobody listens
    stale_inode = path.stat().st_ino

    gateway = await start_with_socket(gateway_factory, path)
    assert path.stat().st_ino != stale_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with gateway.admin() as admin:
        assert (await admin.health())["status"] == "ok"
        assert await admin.list_keys() == []


async def test_a_live_socket_is_never_taken_over(gateway: Gateway, fake: FakeVLLM) -> None:
    first = await gateway.create_key("alice")
    inode = gateway.socket_path.stat().st_ino

    second = web.AppRunner(create_app(gateway.settings))
    try:
        with pytest.raises(AdminSocketError) as caught:
            await second.setup()
    finally:
        await second.cleanup()
    message = str(caught.value)
    assert "another gateway is serving" in message
    assert str(gateway.socket_path) in message

    assert gateway.socket_path.stat().st_ino == inode
    assert stat.S_IMODE(gateway.socket_path.stat().st_mode) == 0o600
    async with gateway.admin() as admin:
        assert (await admin.health())["status"] == "ok"
        assert [k["id"] for k in await admin.list_keys()] == [first["id"]]


def test_bind_refuses_a_live_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    sock, inode = bind_admin_socket(path)
    try:
        with pytest.raises(AdminSocketError, match="another gateway is serving"):
            bind_admin_socket(path)
        assert path.stat().st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    finally:
        sock.close()
        remove_admin_socket(path, inode)


async def test_socket_is_removed_when_the_gateway_stops(gateway: Gateway) -> None:
    path = gateway.socket_path
    assert path.exists()
    await gateway.runner.cleanup()
    assert not path.exists()


# --- who may connect -------------------------------------------------------------------


async def test_root_and_own_uid_are_allowed(
    gateway: Gateway, unix_http: aiohttp.ClientSession
) -> None:
    async with unix_http.get("http://llmgw/keys") as resp:
        assert resp.status == 200
        assert await resp.json() == {"data": []}


async def test_other_uid_is_refused(gateway_factory: GatewayFactory, shared_dir: Path) -> None:
    path = shared_dir / "admin.sock"
    gateway = await start_with_socket(gateway_factory, path)
    created = await gateway.create_key("alice")
    path.chmod(0o666)  # the file mode would let nobody in: the uid check must not

    status, body = await as_nobody(path, "GET", "/keys")
    assert status == 403
    error = assert_openai_error(body, "admin_peer_refused")
    assert "65534" in error["message"]
    assert created["key"] not in orjson.dumps(body).decode()

    status, body = await as_nobody(path, "POST", "/keys", {"user_id": "mallory"})
    assert status == 403
    assert_openai_error(body, "admin_peer_refused")
    status, body = await as_nobody(path, "POST", f"/keys/{created['id']}/revoke")
    assert status == 403

    async with gateway.admin() as admin:
        keys = await admin.list_keys()
    assert [(k["user_id"], k["is_active"]) for k in keys] == [("alice", True)]


async def test_configured_uid_is_allowed(gateway_factory: GatewayFactory, shared_dir: Path) -> None:
    path = shared_dir / "admin.sock"
    gateway = await start_with_socket(gateway_factory, path, allowed_uids=(NOBODY,))
    await gateway.create_key("alice")
    path.chmod(0o666)

    status, body = await as_nobody(path, "GET", "/keys")
    assert status == 200
    assert [k["user_id"] for k in body["data"]] == ["alice"]

    status, body = await as_nobody(path, "POST", "/keys", {"user_id": "bob"})
    assert status == 201
    assert body["key"].startswith("sk-internal-")
    audit = await gateway.rows(
        "SELECT actor, door FROM audit_log WHERE action = 'key.create' ORDER BY id"
    )
    assert [row["door"] for row in audit] == ["socket", "socket"]
    assert audit[1]["actor"].startswith(f"uid:{NOBODY}")  # who created bob's key


# --- the admin API -----------------------------------------------------------------------


async def test_admin_api_key_lifecycle(gateway: Gateway, unix_http: aiohttp.ClientSession) -> None:
    async with unix_http.get("http://llmgw/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"

    async with unix_http.post(
        "http://llmgw/keys",
        json={"user_id": "alice", "tier": "standard", "description": "ci", "expires_at": "30d"},
    ) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["key"].startswith("sk-internal-")
    assert created["user_id"] == "alice"
    assert created["tier"] == "standard"
    assert created["is_active"] is True
    assert created["expires_at"]
    assert "key_hash" not in created
    assert created["key_prefix"] == created["key"][: len(created["key_prefix"])]

    async with unix_http.get(f"http://llmgw/keys/{created['id']}") as resp:
        assert resp.status == 200
        shown = await resp.json()
    async with unix_http.get("http://llmgw/keys") as resp:
        listed = (await resp.json())["data"]
    for view in (shown, *listed):
        assert "key" not in view
        assert "key_hash" not in view
        assert created["key"] not in orjson.dumps(view).decode()
    assert shown["id"] == created["id"]
    assert [k["id"] for k in listed] == [created["id"]]

    async with unix_http.post(f"http://llmgw/keys/{created['id']}/revoke") as resp:
        assert resp.status == 200
        assert (await resp.json())["is_active"] is False
    async with unix_http.get(f"http://llmgw/keys/{created['id']}") as resp:
        assert (await resp.json())["is_active"] is False

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {created['key']}"}
        ) as resp,
    ):
        assert resp.status == 401
        assert "revoked" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({}, "user_id", id="no-user"),
        pytest.param({"user_id": "  "}, "user_id", id="blank-user"),
        pytest.param({"user_id": "a", "tier": "gold"}, "tier", id="unknown-tier"),
        pytest.param({"user_id": "a", "expires_at": "2001-01-01"}, "expires_at", id="past-expiry"),
        pytest.param({"user_id": "a", "expires_at": "soon"}, "expires_at", id="bad-expiry"),
        pytest.param({"user_id": "a", "allowed_models": "m"}, "allowed_models", id="models-str"),
        pytest.param({"user_id": "a", "is_active": False}, "is_active", id="unknown-field"),
    ],
)
async def test_admin_api_refuses_a_bad_key_request(
    gateway: Gateway, unix_http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    async with unix_http.post("http://llmgw/keys", json=body) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = assert_openai_error(await resp.json(), None)
    assert error["param"] == param
    async with gateway.admin() as admin:
        assert await admin.list_keys() == []


async def test_admin_api_unknown_tier_names_the_tiers(gateway: Gateway) -> None:
    async with gateway.admin() as admin:
        with pytest.raises(AdminApiError) as caught:
            await admin.create_key("alice", tier="gold")
    assert caught.value.status == 400
    for tier in ("free", "standard", "premium"):
        assert tier in caught.value.message


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/keys/99999"), ("POST", "/keys/99999/revoke"), ("GET", "/keys/abc")],
)
async def test_admin_api_unknown_key_is_404(
    unix_http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with unix_http.request(method, "http://llmgw" + path) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert_openai_error(body, body["error"]["code"])
    assert path.split("/")[2] in body["error"]["message"]


async def test_admin_api_malformed_json_is_400(unix_http: aiohttp.ClientSession) -> None:
    for raw in (b"{not json", b"[1]"):
        async with unix_http.post(
            "http://llmgw/keys", data=raw, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert_openai_error(await resp.json(), None)


async def test_admin_socket_does_not_serve_the_public_api(
    unix_http: aiohttp.ClientSession, fake: FakeVLLM
) -> None:
    async with unix_http.post("http://llmgw/v1/chat/completions", json={"model": "m"}) as resp:
        assert resp.status == 404
        assert_openai_error(await resp.json(), None)
    assert [r.path for r in fake.behaviour.requests if r.path.startswith("/v1/chat")] == []
