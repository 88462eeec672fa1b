"""The deployment files under config/ are real: the nginx TLS front serves a stream,
the systemd unit verifies, the container's config loads, the Quadlet units hang
together. (The image itself, the pod and compose.yaml: scripts/test-container.)"""

from __future__ import annotations

import asyncio
import configparser
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.config import load_settings

from .conftest import LLMGW, Gateway, free_port

CONFIG = Path(__file__).resolve().parent.parent / "config"


def tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        pytest.fail(f"{name} is needed for this test: run scripts/test (it installs it).")
    return path


def test_the_container_config_loads_with_container_paths() -> None:
    settings = load_settings(CONFIG / "container.toml", {})
    assert settings.database_path == Path("/data/llmgw.db")
    assert settings.socket_path == Path("/run/llmgw/admin.sock")
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8000)
    containerfile = (CONFIG.parent / "Containerfile").read_text()
    assert "COPY config/container.toml /etc/llmgw/llmgw.toml" in containerfile


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "llmgw.service"
    # systemd-analyze checks that ExecStart exists: point it at this checkout's llmgw.
    unit.write_text(
        (CONFIG / "llmgw.service").read_text().replace("/opt/llmgw/venv/bin/llmgw", LLMGW)
    )
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr


def test_the_quadlet_units_refer_to_each_other() -> None:
    def read(name: str) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(CONFIG / name)
        return parser

    gateway, vllm = read("llmgw.container"), read("vllm.container")
    assert gateway["Container"]["Network"] == vllm["Container"]["Network"] == "llmgw.network"
    assert (CONFIG / "llmgw.network").exists()
    volume = gateway["Container"]["Volume"].split(":")[0]
    assert (CONFIG / volume).exists()
    assert (
        gateway["Container"]["Environment"]
        == f"VLLM_BASE_URL=http://{vllm['Container']['ContainerName']}:8000"
    )
    assert gateway["Unit"]["After"] == "vllm.service"
    # Published on loopback only, as the README advises: nginx in front is the way in.
    assert gateway["Container"]["PublishPort"] == "127.0.0.1:8000:8000"
    ports = re.findall(r'^\s+- "([\d.:]+)"', (CONFIG / "compose.yaml").read_text(), re.MULTILINE)
    assert ports == ["127.0.0.1:8000:8000"]


async def test_the_nginx_tls_front_passes_streams(
    gateway: Gateway, api_key: str, tmp_path: Path
) -> None:
    """The example as shipped, with only the certificate, ports and upstream changed."""
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    openssl = await asyncio.create_subprocess_exec(
        tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await openssl.wait() == 0
    https, http = free_port(), free_port()
    upstream = gateway.url.removeprefix("http://")
    site = (
        (CONFIG / "nginx-llmgw.conf")
        .read_text()
        .replace("/etc/nginx/tls/llm-api.pem", str(cert))
        .replace("/etc/nginx/tls/llm-api.key", str(key))
        .replace("listen 443 ssl", f"listen 127.0.0.1:{https} ssl")
        .replace("listen 80;", f"listen 127.0.0.1:{http};")
        .replace("127.0.0.1:8000", upstream)
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    include {tmp_path}/site.conf;
}}
"""
    )
    nginx = await asyncio.create_subprocess_exec(
        tool("nginx"), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        body = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        }
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while True:  # until nginx listens
                    try:
                        async with session.get(f"https://127.0.0.1:{https}/health", ssl=False) as r:
                            assert r.status == 200
                            break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
            async with session.post(
                f"https://127.0.0.1:{https}/v1/chat/completions",
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
                ssl=False,
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = (await resp.read()).decode().split("\n\n")
            async with session.get(f"http://127.0.0.1:{http}/", allow_redirects=False) as r:
                assert r.status == 301
                assert r.headers["Location"].startswith("https://")
        assert events[-2] == "data: [DONE]"
        assert sum('"content":" tok' in e for e in events) == 4
        [row] = await gateway.ledger_rows()
        assert row["completion_tokens"] == 4
    finally:
        nginx.terminate()
        await nginx.wait()
