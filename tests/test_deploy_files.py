"""The deployment files under config/ are real: the nginx TLS front serves a stream,
the systemd unit verifies, the container's config loads, the Quadlet units hang
together. (The image itself, the pod and compose.yaml: scripts/test-container.)"""

from __future__ import annotations

import asyncio
import configparser
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
import yaml

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


REPLICAS = CONFIG / "replicas"


Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """Section -> key -> values: a key may repeat (Environment=), as systemd allows."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            section.setdefault(key, []).append(value)
    return unit


def unit_value(unit: Unit, section: str, key: str) -> str:
    [value] = unit[section][key]
    return value


def unit_environment(unit: Unit) -> dict[str, str]:
    pairs = " ".join(unit["Container"]["Environment"]).split()
    return dict(pair.split("=", 1) for pair in pairs)


def replicas_compose() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((REPLICAS / "compose.yaml").read_text())
    return spec


def nginx_upstreams() -> list[str]:
    conf = (REPLICAS / "nginx.conf").read_text()
    [block] = re.findall(r"upstream llmgw \{(.*?)\}", conf, re.DOTALL)
    return re.findall(r"^\s*server ([\d.]+):8000\b", block, re.MULTILINE)


def test_the_replicas_compose_file_is_consistent() -> None:
    services = replicas_compose()["services"]
    assert set(services) == {"vllm", "postgres", "redis", "llmgw-1", "llmgw-2", "nginx"}
    postgres, redis, nginx = services["postgres"], services["redis"], services["nginx"]
    assert postgres["image"] == "docker.io/library/postgres:15"
    assert redis["image"] == "docker.io/library/redis:7"
    assert nginx["image"].startswith("docker.io/library/nginx:")
    assert "healthcheck" in postgres
    [data] = postgres["volumes"]
    assert data.split(":") == ["llmgw-postgres", "/var/lib/postgresql/data"]
    assert "llmgw-postgres" in replicas_compose()["volumes"]
    assert "volumes" not in redis, "limits state needs no persistence"
    [subnet] = [c["subnet"] for c in replicas_compose()["networks"]["llmgw"]["ipam"]["config"]]
    network = ipaddress.ip_network(subnet)

    pg_env = postgres["environment"]
    addresses = []
    for name in ("llmgw-1", "llmgw-2"):
        gateway = services[name]
        env = gateway["environment"]
        settings = load_settings(
            CONFIG / "container.toml",
            env | {"PGPASSWORD": "x", "ADMIN_SECRET_KEY": "x", "POSTGRES_PASSWORD": "x"},
        )
        db = urlsplit(settings.database.url)
        # The URLs name the services, and the database and user postgres is made with.
        assert (db.hostname, db.port) == ("postgres", 5432)
        assert (db.username, db.path) == (pg_env["POSTGRES_USER"], f"/{pg_env['POSTGRES_DB']}")
        assert env["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"]
        assert settings.limits.backend == "redis"
        assert urlsplit(settings.limits.redis_url).hostname == "redis"
        assert env["ADMIN_SECRET_KEY"] == "${ADMIN_SECRET_KEY:?set ADMIN_SECRET_KEY}"
        assert urlsplit(env["VLLM_BASE_URL"]).hostname == "vllm"
        # nginx is the one proxy trusted, by its fixed address.
        assert settings.admin.trusted_proxies == (nginx["networks"]["llmgw"]["ipv4_address"],)
        assert "ports" not in gateway, "replicas are reached through nginx only"
        assert gateway["container_name"] == name
        assert set(gateway["depends_on"]) == {"vllm", "postgres", "redis"}
        address = gateway["networks"]["llmgw"]["ipv4_address"]
        assert ipaddress.ip_address(address) in network
        addresses.append(address)
    assert nginx_upstreams() == addresses
    assert set(nginx["depends_on"]) == {"llmgw-1", "llmgw-2"}
    [conf] = nginx["volumes"]
    source, target = conf.split(":")[:2]
    assert (REPLICAS / source).resolve() == REPLICAS / "nginx.conf"
    assert target == "/etc/nginx/conf.d/default.conf"
    assert nginx["ports"] == ["8000:8000"]


def test_the_replicas_quadlet_units_refer_to_each_other() -> None:
    units = {path.name: read_unit(path) for path in REPLICAS.glob("*.container")}
    assert set(units) == {
        "llmgw@.container", "postgres.container", "redis.container", "nginx.container"
    }  # fmt: skip
    subnet = ipaddress.ip_network(
        unit_value(read_unit(REPLICAS / "llmgw-replicas.network"), "Network", "Subnet")
    )
    for name, unit in units.items():
        assert unit_value(unit, "Container", "Network") == "llmgw-replicas.network", name
    gateway, nginx = units["llmgw@.container"], units["nginx.container"]
    postgres, redis = units["postgres.container"], units["redis.container"]
    assert (REPLICAS / unit_value(postgres, "Container", "Volume").split(":")[0]).exists()

    # The URLs name the containers, and the database and user postgres is made with.
    env, pg_env = unit_environment(gateway), unit_environment(postgres)
    db = urlsplit(env["DATABASE_URL"])
    assert db.hostname == unit_value(postgres, "Container", "ContainerName")
    assert (db.username, db.path) == (pg_env["POSTGRES_USER"], f"/{pg_env['POSTGRES_DB']}")
    assert env["LLMGW_LIMITS_BACKEND"] == "redis"
    redis_url = urlsplit(env["LLMGW_LIMITS_REDIS_URL"])
    assert redis_url.hostname == unit_value(redis, "Container", "ContainerName")
    assert unit_value(gateway, "Container", "EnvironmentFile") == "/etc/llmgw/secrets.env"
    for name in ("postgres.service", "redis.service"):
        assert name in unit_value(gateway, "Unit", "After").split()

    # nginx is the one proxy trusted, and replica N is at the address nginx.conf names.
    nginx_ip = unit_value(nginx, "Container", "IP")
    assert env["LLMGW_ADMIN_TRUSTED_PROXIES"] == nginx_ip
    assert ipaddress.ip_address(nginx_ip) in subnet
    assert unit_value(gateway, "Container", "ContainerName") == "llmgw-%i"
    replica_ip = unit_value(gateway, "Container", "IP")
    assert [replica_ip.replace("%i", n) for n in ("1", "2")] == nginx_upstreams()
    assert "PublishPort" not in gateway["Container"]
    assert unit_value(nginx, "Container", "PublishPort") == "8000:8000"
    assert unit_value(nginx, "Unit", "After").split() == ["llmgw@1.service", "llmgw@2.service"]
    conf = unit_value(nginx, "Container", "Volume").split(":")[:2]
    assert conf == ["/etc/llmgw/nginx.conf", "/etc/nginx/conf.d/default.conf"]

    # The Compose file and the units describe one deployment.
    compose = replicas_compose()
    assert str(subnet) == compose["networks"]["llmgw"]["ipam"]["config"][0]["subnet"]
    assert nginx_ip == compose["services"]["nginx"]["networks"]["llmgw"]["ipv4_address"]


def test_the_replicas_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    """As mounted in the nginx image: an http block that includes conf.d/."""
    (tmp_path / "nginx.conf").write_text(
        f"""
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    include {REPLICAS}/nginx.conf;
}}
"""
    )
    result = subprocess.run(
        [tool("nginx"), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conf = (REPLICAS / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    [retry] = re.findall(r"^\s*proxy_next_upstream (.*);", conf, re.MULTILINE)
    # A POST sent once is never sent again: nginx's default, kept by leaving this out.
    assert "non_idempotent" not in retry
    assert retry.split() == ["error", "timeout", "http_502", "http_503"]
