"""`llmgw config init|check`, run as the real program.

Neither command talks to a gateway, so plain `subprocess.run` in `tmp_path` will do.
Each run gets an explicit environment: only the variables a test names reach the
program, never the developer's `LLMGW_…` or the seed's names.
"""

from __future__ import annotations

import json
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from llmgw.config import Settings, default_database_path, default_socket_path, load_settings
from llmgw.config_file import render_config, settings_dict

from .conftest import LLMGW

ADMIN_SECRET = "file-admin-secret-3f9a"
UPSTREAM_SECRET = "file-upstream-secret-77c1"
GOOD_TOML = f"""\
[server]
port = 9001

[admin]
secret_key = "{ADMIN_SECRET}"

[[upstreams]]
url = "http://gpu1:8100"
models = ["llama-3-8b"]
api_key = "{UPSTREAM_SECRET}"

[tiers.gold]
requests_per_minute = 500
requests_per_hour = 5000
"""


def run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    return subprocess.run(
        [str(LLMGW), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=base | (env or {}),
        timeout=60,
        check=False,
    )


def fails_in_one_line(done: subprocess.CompletedProcess[str], *named: str) -> None:
    """Exit 1, nothing on stdout, and one line on stderr naming each of `named`."""
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for name in named:
        assert name in lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- init ------------------------------------------------------------------------------


def test_init_writes_a_private_file_that_loads_as_the_defaults(tmp_path: Path) -> None:
    done = run(tmp_path, "config", "init")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # talk goes to stderr
    written = tmp_path / "llmgw.toml"
    assert mode(written) == 0o600
    assert load_settings(written, {}) == load_settings(None, {})
    assert "# Seconds a remote admin API token stays valid." in written.read_text()
    assert "llmgw.toml" in done.stderr
    assert "0600" in done.stderr
    assert "[[upstreams]] url" in done.stderr


def test_init_creates_the_directory(tmp_path: Path) -> None:
    done = run(tmp_path, "config", "init", "etc/llmgw/gateway.toml")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "etc" / "llmgw" / "gateway.toml"
    assert mode(written) == 0o600
    load_settings(written, {})
    assert "--config etc/llmgw/gateway.toml" in done.stderr  # not on the search path


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    existing = tmp_path / "llmgw.toml"
    existing.write_text("# my settings\n")
    existing.chmod(0o644)

    refused = run(tmp_path, "config", "init")
    fails_in_one_line(refused, "llmgw.toml", "--force")
    assert existing.read_text() == "# my settings\n"

    forced = run(tmp_path, "config", "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert existing.read_text() == render_config()
    assert mode(existing) == 0o600, "a replaced file must not keep its old, wider mode"


def test_init_dash_prints_the_file_and_writes_nothing(tmp_path: Path) -> None:
    done = run(tmp_path, "config", "init", "-")
    assert done.returncode == 0, done.stderr
    assert done.stdout == render_config()
    assert list(tmp_path.iterdir()) == []


def test_init_secret_fills_a_fresh_secret_without_printing_it(tmp_path: Path) -> None:
    first = run(tmp_path, "config", "init", "--secret", "one.toml")
    second = run(tmp_path, "config", "init", "--secret", "two.toml")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    one = load_settings(tmp_path / "one.toml", {}).admin.secret_key
    two = load_settings(tmp_path / "two.toml", {}).admin.secret_key
    assert len(one) >= 40  # 32 random bytes, URL-safe base64
    assert one != two
    assert one not in first.stdout + first.stderr
    assert "secret_key" in first.stderr  # it does say that a secret was written


# --- check -----------------------------------------------------------------------------


def test_check_prints_the_settings_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text(GOOD_TOML)
    text = run(tmp_path, "config", "check", "gw.toml")
    as_json = run(tmp_path, "config", "check", "gw.toml", "--json")

    for done in (text, as_json):
        assert done.returncode == 0, done.stderr
        assert ADMIN_SECRET not in done.stdout + done.stderr
        assert UPSTREAM_SECRET not in done.stdout + done.stderr
        assert "gw.toml" in done.stderr
    data = json.loads(as_json.stdout)
    assert data["admin"]["secret_key"] == "***"
    assert data["upstreams"] == [
        {
            "url": "http://gpu1:8100",
            "models": ["llama-3-8b"],
            "api_key": "***",
            "priority_scheduling": False,
        }
    ]
    assert data["server"]["port"] == 9001
    defaults = {
        "tokens_per_minute": 0,
        "tokens_per_day": 0,
        "max_in_flight": 0,
        "budget_tokens": 0,
        "budget_period": "month",
        "default_max_tokens": 4096,
    }
    gold = {"requests_per_minute": 500, "requests_per_hour": 5000, "priority": 0}
    assert data["tiers"]["gold"] == gold | defaults
    free = {"requests_per_minute": 10, "requests_per_hour": 100, "priority": 10}
    assert data["tiers"]["free"] == free | defaults
    assert 'secret_key = "***"' in text.stdout
    assert tomllib.loads(text.stdout) == data, "the text and the JSON say different things"


def test_check_shows_environment_overrides(tmp_path: Path) -> None:
    (tmp_path / "llmgw.toml").write_text(GOOD_TOML)  # found on the search path
    done = run(
        tmp_path,
        "config",
        "check",
        "--json",
        env={"LLMGW_SERVER_PORT": "9555", "ADMIN_SECRET_KEY": "env-admin-secret-91"},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["server"]["port"] == 9555
    assert data["admin"]["secret_key"] == "***"
    assert "env-admin-secret-91" not in done.stdout + done.stderr


def test_check_reads_llmgw_config(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.toml").write_text("[server]\nport = 9444\n")
    done = run(tmp_path, "config", "check", "--json", env={"LLMGW_CONFIG": "elsewhere.toml"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["server"]["port"] == 9444
    assert "elsewhere.toml" in done.stderr


def test_check_without_a_file_shows_the_defaults(tmp_path: Path) -> None:
    if Path("/etc/llmgw/llmgw.toml").is_file():
        pytest.skip("this machine has /etc/llmgw/llmgw.toml, which check would read")
    done = run(tmp_path, "config", "check")
    assert done.returncode == 0, done.stderr
    assert "no config file" in done.stderr.lower()
    # The paths the gateway will use (they depend on the user), not "", marked so.
    socket, database = default_socket_path(), default_database_path()
    assert f'socket = "{socket}"  # the default for this user\n' in done.stdout
    assert f'path = "{database}"  # the default for this user\n' in done.stdout
    expected = settings_dict(Settings())
    expected["admin"]["socket"], expected["database"]["path"] = str(socket), str(database)
    assert tomllib.loads(done.stdout) == expected
    assert 'secret_key = ""' in done.stdout  # unset secrets are shown as unset

    as_json = json.loads(run(tmp_path, "config", "check", "--json").stdout)
    assert (as_json["admin"]["socket"], as_json["database"]["path"]) == (str(socket), str(database))
    paths = {"LLMGW_ADMIN_SOCKET": "/srv/gw.sock", "LLMGW_DATABASE_PATH": "/srv/gw.db"}
    chosen = run(tmp_path, "config", "check", env=paths).stdout
    assert 'socket = "/srv/gw.sock"\n' in chosen  # set, so not marked as a default
    assert 'path = "/srv/gw.db"\n' in chosen


def test_check_a_bad_file_exits_1_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nprot = 8000\n")
    fails_in_one_line(run(tmp_path, "config", "check", "bad.toml"), "prot")
    fails_in_one_line(run(tmp_path, "config", "check", "bad.toml", "--json"), "prot")


def test_check_a_bad_environment_variable_exits_1_naming_it(tmp_path: Path) -> None:
    done = run(tmp_path, "config", "check", env={"LLMGW_SERVER_PORT": "eighty"})
    fails_in_one_line(done, "port", "eighty")


def test_check_a_missing_file_exits_1(tmp_path: Path) -> None:
    fails_in_one_line(run(tmp_path, "config", "check", "absent.toml"), "absent.toml")


def test_check_accepts_what_init_wrote(tmp_path: Path) -> None:
    assert run(tmp_path, "config", "init", "--secret").returncode == 0
    secret = load_settings(tmp_path / "llmgw.toml", {}).admin.secret_key
    done = run(tmp_path, "config", "check")
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    assert 'secret_key = "***"' in done.stdout
