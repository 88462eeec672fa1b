"""Settings: defaults, the TOML file, the seed's variable names and `LLMGW_…` overrides.

Every case passes an explicit `environ`, so nothing here depends on the shell the tests
run in. Errors must be one line that names the offending key: that line is all an
operator sees when `llmgw serve` refuses to start.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from llmgw.config import (
    AdminSettings,
    ConfigError,
    DatabaseSettings,
    LimitsSettings,
    LoggingSettings,
    ServerSettings,
    Settings,
    TierSettings,
    UpstreamSettings,
    find_config_file,
    load_settings,
)
from llmgw.config_file import masked, render_config, settings_dict

from .conftest import LLMGW

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "llmgw.toml.example"
SETTINGS_CLASSES = (
    ServerSettings,
    AdminSettings,
    DatabaseSettings,
    UpstreamSettings,
    TierSettings,
    LimitsSettings,
    LoggingSettings,
)

FULL_TOML = """\
[server]
host = "127.0.0.2"
port = 9001
max_body_bytes = 4096
upstream_connect_timeout = 1.5
upstream_timeout = 120
stream_idle_timeout = 60.0
shutdown_grace_period = 5
health_check_interval = 2.5

[admin]
socket = "/srv/llmgw/admin.sock"
allowed_uids = [1000, 1001]
default_tier = "standard"
secret_key = "admin-file-secret"

[database]
path = "/srv/llmgw/usage.db"
flush_interval = 0.2
batch_size = 50
max_pending = 5000

[[upstreams]]
url = "http://gpu1:8100"
models = ["llama-3-8b", "qwen-7b"]
api_key = "upstream-file-secret"

[[upstreams]]
url = "https://gpu2:8100"

[tiers.free]
requests_per_minute = 5
requests_per_hour = 50

[tiers.gold]
requests_per_minute = 500
requests_per_hour = 5000

[logging]
level = "debug"
format = "json"
file = "/var/log/llmgw/llmgw.log"
"""


def write(tmp_path: Path, text: str, name: str = "llmgw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str]) -> str:
    """The message `load_settings` refuses with, checked to be a single line."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ)
    message = str(caught.value)
    assert message.strip(), "a ConfigError needs a message"
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    return message


# --- defaults and the file -----------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(None, {})
    assert settings.server.port == 8000
    assert settings.server.host == "0.0.0.0"
    assert dict(settings.tiers) == {
        "free": TierSettings(10, 100, priority=10),
        "standard": TierSettings(30, 300, priority=5),
        "premium": TierSettings(100, 1000, priority=0),
    }
    free = settings.tiers["free"]
    assert (free.tokens_per_minute, free.tokens_per_day, free.max_in_flight) == (0, 0, 0)
    assert (free.budget_tokens, free.budget_period, free.default_max_tokens) == (0, "month", 4096)
    assert settings.upstreams[0].priority_scheduling is False
    assert settings.admin.default_tier == "free"
    assert settings.admin.allowed_uids == ()
    assert len(settings.upstreams) == 1
    assert settings.upstreams[0].url.startswith("http://")
    assert settings.logging == LoggingSettings("info", "text", "")


def test_full_file_sets_every_section(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL_TOML), {})

    assert settings.server == ServerSettings(
        host="127.0.0.2",
        port=9001,
        max_body_bytes=4096,
        upstream_connect_timeout=1.5,
        upstream_timeout=120.0,
        stream_idle_timeout=60.0,
        shutdown_grace_period=5.0,
        health_check_interval=2.5,
    )
    assert settings.admin == AdminSettings(
        socket="/srv/llmgw/admin.sock",
        allowed_uids=(1000, 1001),
        default_tier="standard",
        secret_key="admin-file-secret",
    )
    assert settings.socket_path == Path("/srv/llmgw/admin.sock")
    assert settings.database == DatabaseSettings("/srv/llmgw/usage.db", 0.2, 50, 5000)
    assert settings.database_path == Path("/srv/llmgw/usage.db")
    assert settings.upstreams == (
        UpstreamSettings("http://gpu1:8100", ("llama-3-8b", "qwen-7b"), "upstream-file-secret"),
        UpstreamSettings("https://gpu2:8100"),
    )
    assert dict(settings.tiers) == {
        "free": TierSettings(5, 50, priority=10),
        "standard": TierSettings(30, 300, priority=5),  # defaults stay unless overridden
        "premium": TierSettings(100, 1000),
        "gold": TierSettings(500, 5000),
    }
    assert settings.logging == LoggingSettings("debug", "json", "/var/log/llmgw/llmgw.log")


def test_partial_tier_override_keeps_the_other_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[tiers.premium]\nrequests_per_minute = 150\n")
    assert load_settings(path, {}).tiers["premium"] == TierSettings(150, 1000)
    path = write(tmp_path, "[tiers.free]\ntokens_per_day = 1000\n")
    assert load_settings(path, {}).tiers["free"] == TierSettings(
        10, 100, tokens_per_day=1000, priority=10
    )


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    environ = {"ADMIN_SECRET_KEY": "seed-admin-secret"}
    settings = load_settings(write(tmp_path, FULL_TOML.replace("admin-file-secret", "")), environ)
    assert settings.admin.secret_key == "seed-admin-secret"
    assert settings.upstreams[0].api_key == "upstream-file-secret"
    for text in (repr(settings), str(settings), repr(settings.admin), repr(settings.upstreams)):
        assert "seed-admin-secret" not in text
        assert "upstream-file-secret" not in text


# --- environment ---------------------------------------------------------------------


def test_llmgw_variables_override_settings() -> None:
    settings = load_settings(
        None,
        {
            "LLMGW_SERVER_PORT": "9100",
            "LLMGW_SERVER_UPSTREAM_TIMEOUT": "30.5",
            "LLMGW_ADMIN_ALLOWED_UIDS": "1000, 1002",
            "LLMGW_DATABASE_PATH": "/data/llmgw.db",
            "LLMGW_LOGGING_FORMAT": "json",
            "LLMGW_UPSTREAMS": "http://gpu1:8100, http://gpu2:8100",
            "LLMGW_TIERS_GOLD_REQUESTS_PER_MINUTE": "7",
            "LLMGW_TIERS_GOLD_REQUESTS_PER_HOUR": "70",
        },
    )
    assert settings.server.port == 9100
    assert settings.server.upstream_timeout == 30.5
    assert settings.admin.allowed_uids == (1000, 1002)
    assert settings.database_path == Path("/data/llmgw.db")
    assert settings.logging.format == "json"
    assert [u.url for u in settings.upstreams] == ["http://gpu1:8100", "http://gpu2:8100"]
    assert settings.tiers["gold"] == TierSettings(7, 70)
    assert settings.tiers["free"] == TierSettings(10, 100, priority=10)


def test_token_limits_budgets_and_priority_from_the_file_and_the_environment(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "[tiers.gold]\nrequests_per_minute = 5\nrequests_per_hour = 50\n"
        'tokens_per_minute = 1000\nbudget_tokens = 900000\nbudget_period = "week"\n'
        '[[upstreams]]\nurl = "http://gpu1:8100"\npriority_scheduling = true\n',
    )
    environ = {
        # tokens_per_minute must not be read as (a tier "free_tokens" and) requests_per_minute
        "LLMGW_TIERS_FREE_TOKENS_PER_MINUTE": "2000",
        "LLMGW_TIERS_FREE_REQUESTS_PER_MINUTE": "20",
        "LLMGW_TIERS_FREE_BUDGET_PERIOD": "day",
        "LLMGW_TIERS_FREE_DEFAULT_MAX_TOKENS": "512",
        "LLMGW_TIERS_PREMIUM_PRIORITY": "-1",
        "LLMGW_TIERS_GOLD_MAX_IN_FLIGHT": "3",
    }
    settings = load_settings(path, environ)
    free = settings.tiers["free"]
    assert (free.requests_per_minute, free.tokens_per_minute) == (20, 2000)
    assert (free.budget_period, free.default_max_tokens, free.priority) == ("day", 512, 10)
    assert settings.tiers["premium"].priority == -1
    assert settings.tiers["gold"] == TierSettings(
        5, 50, tokens_per_minute=1000, max_in_flight=3, budget_tokens=900000, budget_period="week"
    )
    assert settings.upstreams[0].priority_scheduling is True


def test_shared_limits_are_set_by_llmgw_variables_and_the_url_is_never_echoed() -> None:
    settings = load_settings(
        None,
        {
            "LLMGW_LIMITS_BACKEND": "redis",
            "LLMGW_LIMITS_REDIS_URL": "redis://:s3cret@cache:6380/2",
            "LLMGW_LIMITS_ON_REDIS_ERROR": "deny",
        },
    )
    assert settings.limits == LimitsSettings(
        backend="redis", redis_url="redis://:s3cret@cache:6380/2", on_redis_error="deny"
    )
    assert "s3cret" not in repr(settings)
    assert load_settings(None, {}).limits.backend == "memory"
    bad = {"LLMGW_LIMITS_BACKEND": "redis", "LLMGW_LIMITS_REDIS_URL": "redis://:s3cret@x:99999"}
    assert "s3cret" not in config_error(None, bad)


def test_variables_that_steer_the_cli_are_not_settings() -> None:
    environ = {"LLMGW_CONFIG": "/nowhere.toml", "LLMGW_URL": "http://x", "LLMGW_TOKEN": "t"}
    assert load_settings(None, environ) == load_settings(None, {})


def test_seed_variable_names_are_accepted() -> None:
    settings = load_settings(
        None,
        {
            "VLLM_BASE_URL": "http://vllm.internal:8100",
            "DATABASE_URL": "sqlite:///./x.db",
            "GATEWAY_PORT": "8088",
            "RATE_LIMIT_PREMIUM_PER_MINUTE": "200",
            "RATE_LIMIT_FREE_PER_HOUR": "120",
            "ADMIN_SECRET_KEY": "s3cret",
        },
    )
    assert [u.url for u in settings.upstreams] == ["http://vllm.internal:8100"]
    assert settings.database_path == Path("./x.db")
    assert settings.server.port == 8088
    assert settings.tiers["premium"] == TierSettings(200, 1000)
    assert settings.tiers["free"] == TierSettings(10, 120, priority=10)
    assert settings.admin.secret_key == "s3cret"


def test_seed_database_url_with_an_absolute_path() -> None:
    settings = load_settings(None, {"DATABASE_URL": "sqlite:////abs/x.db"})
    assert settings.database_path == Path("/abs/x.db")
    assert settings.postgres_url is None


@pytest.mark.parametrize(
    "url", ["postgresql://llmgw@db.internal:5432/llmgw", "postgres://u:p@db/llmgw"]
)
def test_a_postgres_database_url_chooses_postgresql(tmp_path: Path, url: str) -> None:
    assert load_settings(None, {"DATABASE_URL": url}).postgres_url == url
    from_file = write(tmp_path, f'[database]\nurl = "{url}"\n')
    assert load_settings(from_file, {}).postgres_url == url
    # The URL may hold a password: settings shown or logged never do.
    assert url not in repr(load_settings(from_file, {}))


def test_a_sqlite_database_url_names_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[database]\nurl = "sqlite:////srv/x.db"\n'), {})
    assert (settings.database_path, settings.postgres_url) == (Path("/srv/x.db"), None)


def test_precedence_file_then_seed_then_llmgw(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9000\n[[upstreams]]\nurl = "http://file:8100"\n'
        "[tiers.premium]\nrequests_per_minute = 150\n",
    )
    seed = {
        "GATEWAY_PORT": "9100",
        "VLLM_BASE_URL": "http://seed:8100",
        "RATE_LIMIT_PREMIUM_PER_MINUTE": "250",
    }
    ours = {
        "LLMGW_SERVER_PORT": "9200",
        "LLMGW_UPSTREAMS": "http://llmgw:8100",
        "LLMGW_TIERS_PREMIUM_REQUESTS_PER_MINUTE": "350",
    }

    from_file = load_settings(path, {})
    assert (from_file.server.port, from_file.upstreams[0].url) == (9000, "http://file:8100")
    assert from_file.tiers["premium"].requests_per_minute == 150

    over_file = load_settings(path, seed)
    assert (over_file.server.port, over_file.upstreams[0].url) == (9100, "http://seed:8100")
    assert over_file.tiers["premium"].requests_per_minute == 250

    over_seed = load_settings(path, seed | ours)
    assert (over_seed.server.port, over_seed.upstreams[0].url) == (9200, "http://llmgw:8100")
    assert over_seed.tiers["premium"].requests_per_minute == 350
    assert over_seed.tiers["premium"].requests_per_hour == 1000


def test_config_file_is_found_explicitly_or_through_llmgw_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9300\n", name="elsewhere.toml")
    assert find_config_file(str(path), {}) == path
    assert find_config_file(None, {"LLMGW_CONFIG": str(path)}) == path
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        find_config_file(str(tmp_path / "gone.toml"), {})


# --- errors: one line naming the key ---------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "environ", "names"),
    [
        pytest.param("[server]\nprot = 8000\n", {}, ["prot"], id="unknown-key-in-section"),
        pytest.param("[serverr]\nport = 8000\n", {}, ["serverr"], id="unknown-section"),
        pytest.param('[server]\nport = "abc"\n', {}, ["port", "abc"], id="port-abc-in-file"),
        pytest.param("[server]\nport = 70000\n", {}, ["port"], id="port-out-of-range"),
        pytest.param(
            "[server]\nupstream_timeout = -1\n", {}, ["upstream_timeout"], id="negative-timeout"
        ),
        pytest.param(
            "[tiers.gold]\nrequests_per_minute = 5\n",
            {},
            ["gold", "requests_per_hour"],
            id="new-tier-without-hour-limit",
        ),
        pytest.param(
            '[[upstreams]]\nurl = "gpu1:8100"\n', {}, ["upstreams", "url"], id="bad-upstream-url"
        ),
        pytest.param('[logging]\nlevel = "verbose"\n', {}, ["level"], id="bad-log-level"),
        pytest.param(
            '[admin]\ndefault_tier = "gold"\n', {}, ["default_tier", "gold"], id="no-such-tier"
        ),
        pytest.param("[server]\nport = \n", {}, ["llmgw.toml", "TOML"], id="invalid-toml"),
        pytest.param("", {"LLMGW_SERVER_PROT": "1"}, ["LLMGW_SERVER_PROT"], id="unknown-llmgw"),
        pytest.param("", {"LLMGW_NOPE": "1"}, ["LLMGW_NOPE"], id="unknown-llmgw-section"),
        pytest.param("", {"LLMGW_SERVER_PORT": "abc"}, ["port", "abc"], id="port-abc-in-env"),
        pytest.param("", {"GATEWAY_PORT": "abc"}, ["GATEWAY_PORT"], id="seed-port-abc"),
        pytest.param(
            "",
            {"LLMGW_TIERS_GOLD_REQUESTS_PER_MINUTE": "5"},
            ["gold", "requests_per_hour", "needs both", "LLMGW_TIERS_GOLD_REQUESTS_PER_HOUR"],
            id="env-tier-without-hour-limit",
        ),
        pytest.param(
            "", {"LLMGW_UPSTREAMS": "gpu1:8100"}, ["upstreams", "url"], id="bad-env-upstream"
        ),
        pytest.param(
            "",
            {"DATABASE_URL": "mysql://u:hunter2@db/llmgw"},
            ["DATABASE_URL", "postgresql://", "sqlite:///", "mysql://"],
            id="mysql-database-url",
        ),
        pytest.param(
            '[database]\nurl = "mysql://db/llmgw"\n',
            {},
            ["[database] url", "postgresql://", "sqlite:///"],
            id="mysql-database-url-in-file",
        ),
        pytest.param(
            '[limits]\nbackend = "redis"\n',
            {},
            ["[limits] redis_url", "required", "redis://HOST:PORT/DB", "LLMGW_LIMITS_REDIS_URL"],
            id="redis-backend-without-url",
        ),
        pytest.param(
            "",
            {"LLMGW_LIMITS_BACKEND": "redis", "LLMGW_LIMITS_REDIS_URL": "http://:pw@cache:6379"},
            ["[limits] redis_url", "redis://HOST:PORT/DB"],
            id="redis-url-not-redis",
        ),
        pytest.param(
            '[limits]\nbackend = "redis"\nredis_url = "redis://cache:6379/zero"\n',
            {},
            ["[limits] redis_url", "database"],
            id="redis-url-bad-database",
        ),
        pytest.param(
            '[limits]\nbackend = "valkey"\n', {}, ["backend", "memory, redis"], id="bad-backend"
        ),
        pytest.param(
            "", {"LLMGW_LIMITS_ON_REDIS_ERROR": "open"}, ["on_redis_error"], id="bad-policy"
        ),
        pytest.param(
            "[tiers.free]\ntokens_per_minute = -1\n",
            {},
            ["[tiers.free] tokens_per_minute", "negative"],
            id="negative-token-limit",
        ),
        pytest.param(
            "", {"LLMGW_TIERS_PREMIUM_MAX_IN_FLIGHT": "-2"}, ["max_in_flight"], id="negative-env"
        ),
        pytest.param(
            "[tiers.free]\nbudget_tokens = -5\n", {}, ["budget_tokens"], id="negative-budget"
        ),
        pytest.param(
            '[tiers.free]\nbudget_period = "year"\n',
            {},
            ["budget_period", "day, week, month", "year"],
            id="bad-budget-period",
        ),
        pytest.param(
            "", {"LLMGW_TIERS_FREE_BUDGET_PERIOD": "hour"}, ["budget_period"], id="env-bad-period"
        ),
        pytest.param(
            "[tiers.free]\ndefault_max_tokens = 0\n",
            {},
            ["default_max_tokens", "at least 1"],
            id="zero-default-max-tokens",
        ),
        pytest.param(
            '[[upstreams]]\nurl = "http://gpu1:8100"\npriority_scheduling = "maybe"\n',
            {},
            ["priority_scheduling", "true or false"],
            id="bad-priority-scheduling",
        ),
        pytest.param("server = 8080\n", {}, ["server"], id="section-not-a-table"),
        pytest.param(
            'database = "/srv/x.db"\n',
            {"LLMGW_DATABASE_PATH": "/srv/y.db"},
            ["database"],
            id="section-not-a-table-with-env-override",
        ),
    ],
)
def test_bad_setting_is_one_line_naming_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], names: list[str]
) -> None:
    message = config_error(write(tmp_path, toml), environ)
    for name in names:
        assert name in message, f"{name!r} not named in {message!r}"


# --- the example file and `llmgw serve` -------------------------------------------------


def test_example_file_loads_and_documents_every_setting() -> None:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing"
    text = EXAMPLE.read_text(encoding="utf-8")
    load_settings(EXAMPLE, {})
    for header in (r"\[server\]", r"\[admin\]", r"\[database\]", r"\[\[upstreams\]\]"):
        assert re.search(rf"^[#\s]*{header}", text, re.MULTILINE), f"{header} not documented"
    assert re.search(r"^[#\s]*\[tiers\.\w+\]", text, re.MULTILINE), "[tiers.NAME] not documented"
    assert re.search(r"^[#\s]*\[logging\]", text, re.MULTILINE), "[logging] not documented"
    undocumented = [
        f"{cls.__name__}.{f.name}"
        for cls in SETTINGS_CLASSES
        for f in dataclasses.fields(cls)
        if not re.search(rf"^[#\s]*{f.name}\s*=", text, re.MULTILINE)
    ]
    assert undocumented == []


def test_example_file_shows_the_defaults() -> None:
    # Its first line promises "every setting, with its default": a reader copies it
    # believing that, so a value that differs from the built-in default misleads.
    example = load_settings(EXAMPLE, {})
    defaults = load_settings(None, {})
    for section in ("server", "admin", "database", "logging"):
        assert getattr(example, section) == getattr(defaults, section), section
    assert example.upstreams == defaults.upstreams
    assert dict(example.tiers) == dict(defaults.tiers)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        pytest.param("[server]\nprot = 8000\n", "prot", id="unknown-key"),
        pytest.param("[server]\nport = \n", "TOML", id="invalid-toml"),
    ],
)
def test_serve_with_a_bad_config_exits_1_with_one_line(
    tmp_path: Path, toml: str, named: str
) -> None:
    path = write(tmp_path, toml, name="bad.toml")
    done = subprocess.run(
        [str(LLMGW), "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]


def test_serve_with_a_bad_environment_variable_exits_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(LLMGW), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLMGW_SERVER_PROT": "8000"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "LLMGW_SERVER_PROT" in lines[0]


def test_serve_with_a_missing_config_file_exits_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(LLMGW), "serve", "--config", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "absent.toml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- the documentation on the fields, and the file rendered from it -----------------------


def test_every_setting_and_section_has_help() -> None:
    # `llmgw config init` writes this help above each key: a field without it would be
    # a setting nobody can find out about.
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in (*SETTINGS_CLASSES, Settings)
        for f in dataclasses.fields(cls)
        if not str(f.metadata.get("help", "")).strip()
    ]
    assert missing == []


def test_example_file_is_what_config_init_writes() -> None:
    # The example is generated, so its comments and values cannot drift from the code.
    assert EXAMPLE.read_text(encoding="utf-8") == render_config(), (
        "llmgw.toml.example is stale: run `llmgw config init --force llmgw.toml.example`"
    )


def test_rendered_defaults_load_back_as_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, render_config())
    assert load_settings(path, {}) == load_settings(None, {})


def test_rendered_settings_load_back_unchanged(tmp_path: Path) -> None:
    # Every section and every kind of value (lists, two upstreams, an added tier,
    # secrets) survives the trip through tomli-w, with and without the comments.
    settings = load_settings(write(tmp_path, FULL_TOML), {})
    for comments in (True, False):
        text = render_config(settings, comments=comments)
        assert load_settings(write(tmp_path, text, name="again.toml"), {}) == settings


def test_rendered_file_puts_the_help_above_each_key() -> None:
    lines = render_config().splitlines()
    helps: dict[str, list[list[str]]] = {}  # a name two sections use ([database] url) has two
    for cls in SETTINGS_CLASSES:
        for f in dataclasses.fields(cls):
            helps.setdefault(f.name, []).append(str(f.metadata["help"]).split())
    checked = set()
    for i, line in enumerate(lines):
        key = line.partition(" = ")[0]
        if key not in helps:
            continue
        comment: list[str] = []
        for above in reversed(lines[:i]):
            if not above.startswith("# "):
                break
            comment[:0] = above.removeprefix("# ").split()
        assert comment in helps[key], f"{key}: {comment} is not its help"
        checked.add(key)
    assert checked == set(helps)


def test_masked_hides_every_secret_that_is_set() -> None:
    secret_fields = [
        (cls.__name__, f.name)
        for cls in SETTINGS_CLASSES
        for f in dataclasses.fields(cls)
        if f.metadata.get("secret")
    ]
    assert ("AdminSettings", "secret_key") in secret_fields
    assert ("UpstreamSettings", "api_key") in secret_fields
    settings = load_settings(
        None,
        {"ADMIN_SECRET_KEY": "admin-s3cret", "LLMGW_UPSTREAMS": "http://a:1,http://b:2"},
    )
    upstreams = (
        dataclasses.replace(settings.upstreams[0], api_key="upstream-s3cret"),
        settings.upstreams[1],
    )
    shown = masked(dataclasses.replace(settings, upstreams=upstreams))
    for text in (render_config(shown), str(settings_dict(shown))):
        assert "s3cret" not in text
    assert shown.admin.secret_key == "***"
    assert [u.api_key for u in shown.upstreams] == ["***", ""]  # an unset one stays empty
    assert [u.url for u in shown.upstreams] == ["http://a:1", "http://b:2"]
    assert dataclasses.replace(shown, admin=settings.admin, upstreams=settings.upstreams) == (
        settings
    ), "masking changed something besides the secrets"
