"""Settings: `llmgw.toml` plus environment overrides, read once into frozen dataclasses.

Precedence, lowest first: built-in defaults, the TOML file, the seed system's variable
names (`VLLM_BASE_URL`, `DATABASE_URL`, `GATEWAY_PORT`, `RATE_LIMIT_<TIER>_PER_MINUTE|HOUR`,
`ADMIN_SECRET_KEY`), then `LLMGW_<SECTION>_<KEY>`. Anything unknown or malformed raises
`ConfigError` with one line naming the key, so a typo stops start-up instead of being
silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from .client_address import parse_network

T = TypeVar("T")

# Environment variables that start with LLMGW_ but are not settings (they steer the CLI).
NON_SETTING_ENV = frozenset({"LLMGW_CONFIG", "LLMGW_URL", "LLMGW_TOKEN"})
CONFIG_SEARCH_PATH = (Path("llmgw.toml"), Path("/etc/llmgw/llmgw.toml"))
SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DATABASE_URL_FORMS = "postgresql://USER@HOST:PORT/DB or sqlite:///PATH"


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it."""


def setting(default: T, text: str, *, secret: bool = False) -> T:
    """A field with a default and its documentation, which `llmgw config init` writes out.

    Secret fields stay out of `repr` (so out of logs and tracebacks) and are masked by
    `llmgw config check`.
    """
    return field(default=default, repr=not secret, metadata=doc(text, secret=secret))


def doc(text: str, *, secret: bool = False) -> dict[str, Any]:
    """Field metadata: the help written above the setting, and whether to hide its value."""
    return {"help": text, "secret": secret}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = setting(
        "0.0.0.0",  # noqa: S104 - a gateway is meant to be reached from the network
        "Address the OpenAI-compatible API, /health and /metrics listen on.",
    )
    port: int = setting(8000, "Port the OpenAI-compatible API, /health and /metrics listen on.")
    replica_name: str = setting(
        "",
        "How this gateway names itself in /health, /stats, `llmgw status` and llmgw-tui, "
        "so an admin knows which replica's live figures they see. Empty: HOST:PORT, this "
        "host's name and the port above.",
    )
    max_body_bytes: int = setting(
        16 * 1024 * 1024, "Largest request body accepted (bytes); larger ones get 413."
    )
    header_timeout: float = setting(
        10.0,
        "Seconds a client has to send a request's headers, from the connection's opening "
        "(on a kept-alive connection, from the request's first byte); then 408 and the "
        "connection is closed. This is what cuts off a client that trickles headers to "
        "hold connections open.",
    )
    body_timeout: float = setting(
        60.0,
        "Seconds a client has to send the whole request body once its headers are in; then "
        "408. Allow the largest body (max_body_bytes) over the slowest client's link.",
    )
    keepalive_timeout: float = setting(
        75.0,
        "Seconds an idle kept-alive client connection stays open. Keep it longer than the "
        "idle time of the clients' own connection pools (and of nginx's upstream "
        "keepalive_timeout, 60 s), so they close first and never reuse a connection the "
        "gateway is closing.",
    )
    upstream_connect_timeout: float = setting(
        5.0, "Seconds to open a connection to an upstream before trying the next one."
    )
    upstream_timeout: float = setting(
        600.0,
        "Seconds to wait for an upstream's response headers (a non-streaming answer comes "
        "with its headers, so this bounds a whole generation); then 504.",
    )
    stream_idle_timeout: float = setting(
        300.0, "Seconds a stream may go without a byte from the upstream before it is cut off."
    )
    shutdown_drain_delay: float = setting(
        5.0,
        "Seconds after SIGTERM during which the gateway still accepts and serves, while "
        "/health answers 503, so a load balancer's health checks see it leave before "
        "its port closes (0: close at once). A second signal ends the delay.",
    )
    shutdown_grace_period: float = setting(
        30.0,
        "Seconds SIGTERM then waits for in-flight requests (streams included) to finish.",
    )
    health_check_interval: float = setting(
        10.0, "Seconds between upstream health checks (GET /health and /v1/models)."
    )


@dataclass(frozen=True, slots=True)
class AdminSettings:
    socket: str = setting(
        "",
        "The admin Unix socket used by `llmgw` and `llmgw-tui`. Empty: /run/llmgw/admin.sock "
        "for root, else $XDG_RUNTIME_DIR/llmgw/admin.sock (or /tmp/llmgw-<uid>/admin.sock).",
    )
    allowed_uids: tuple[int, ...] = setting(
        (), "Uids besides root and the gateway's own that may use the admin socket."
    )
    default_tier: str = setting("free", "The tier of a key created without one.")
    secret_key: str = setting(
        "",
        "Signs remote admin API tokens (ADMIN_SECRET_KEY works too); keep it secret. Empty: "
        "a random one each start, so tokens end with the process (`llmgw config init "
        "--secret` writes a lasting one).",
        secret=True,
    )
    token_ttl: float = setting(3600.0, "Seconds a remote admin API token stays valid.")
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "Addresses or networks (127.0.0.1, 10.0.0.0/8) of the reverse proxies in front of "
        "the gateway, such as nginx, whose X-Forwarded-For header names the client. The "
        "login throttle, the audit log's door and the access log's client then see that "
        "client instead of the proxy (behind nginx, every client is nginx's address). "
        "Empty: the header is ignored, since a client can write anything in it.",
    )


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    path: str = setting(
        "",
        "SQLite file. Empty: /var/lib/llmgw/llmgw.db for root, else "
        "$XDG_DATA_HOME/llmgw/llmgw.db (~/.local/share/llmgw/llmgw.db).",
    )
    flush_interval: float = setting(
        0.25, "Seconds usage records gather before they are written in one transaction."
    )
    batch_size: int = setting(1000, "Most usage records written in one transaction.")
    max_pending: int = setting(
        100_000,
        "Most usage records held while the database is unavailable; beyond that they are "
        "counted as dropped, logged, and shown in /health.",
    )
    url: str = setting(
        "",
        "The database as a URL, instead of path: postgresql://USER@HOST:PORT/DB for "
        "PostgreSQL (what replicas of the gateway share; the password from PGPASSWORD or "
        "~/.pgpass, or in the URL, which is why it is shown masked), or sqlite:///PATH for "
        "a SQLite file. Empty: the SQLite file at path. DATABASE_URL sets it too.",
        secret=True,
    )
    key_sync_interval: float = setting(
        5.0,
        "Seconds between two reads of the key change log, each replica's catch-up on key "
        "changes made through the others (heard at once on PostgreSQL; this is for one "
        "missed, as across a reconnection). /health says degraded after 3 without success.",
    )


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = field(metadata=doc("The vLLM server's base URL (http:// or https://), without /v1."))
    models: tuple[str, ...] = setting(
        (),
        "Models routed to it; empty: the models its /v1/models lists (checked every "
        "health_check_interval).",
    )
    api_key: str = setting(
        "", "Sent upstream as a bearer token when vLLM runs with --api-key.", secret=True
    )
    priority_scheduling: bool = setting(
        False,
        "vLLM runs with --scheduling-policy priority: requests carry their tier's priority "
        "(sent only there: a server that does not schedule by it ignores it, or, before "
        "vLLM's V1 engine, refuses it).",
    )


@dataclass(frozen=True, slots=True)
class TierSettings:
    requests_per_minute: int = field(metadata=doc("Requests a key of this tier may make a minute."))
    requests_per_hour: int = field(metadata=doc("Requests a key of this tier may make an hour."))
    tokens_per_minute: int = setting(
        0,
        "Tokens (prompt + completion, as vLLM counts them) a key of this tier may use a "
        "minute, e.g. 20000; 0: unlimited. A request is admitted on its estimate (prompt + "
        "max_tokens) and charged what it used.",
    )
    tokens_per_day: int = setting(
        0, "Tokens a key of this tier may use in 24 hours, e.g. 2000000; 0: unlimited."
    )
    max_in_flight: int = setting(
        0,
        "Requests of one key served at once, e.g. 4 (a stream counts until its last byte); "
        "one more is refused with 429. 0: unlimited.",
    )
    budget_tokens: int = setting(
        0,
        "Tokens a key of this tier may use in a budget_period, e.g. 50000000 a month; once "
        "spent, its requests are refused with 429 until the next period. 0: no budget.",
    )
    budget_period: Literal["day", "week", "month"] = setting(
        "month",
        "The calendar period of budget_tokens, in UTC: day, week (from Monday) or month.",
    )
    default_max_tokens: int = setting(
        4096,
        "The max_tokens given to a chat request that names none (nor "
        "max_completion_tokens), so that every request has an estimate to reserve and none "
        "holds a GPU for a whole context it never asked for; e.g. 4096. Not set where it "
        "may not fit the model's context with the prompt (vLLM would refuse it): there the "
        "rest of the context is reserved. A text completion without max_tokens keeps 16.",
    )
    priority: int = setting(
        0,
        "Sent to vLLM as the request's priority, for upstreams with priority_scheduling; "
        "vLLM runs LOWER values first, e.g. 0 for premium, 10 for free.",
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    backend: Literal["memory", "redis"] = setting(
        "memory",
        "Where the keys' rate limits are counted. memory: in this process (one gateway). "
        "redis: in a Redis (or Valkey) server shared by every replica, so that together "
        "they grant a key its limit once, not once each.",
    )
    redis_url: str = setting(
        "",
        'The Redis server of backend = "redis" (required then): redis://HOST:PORT/DB, '
        "rediss:// for TLS, with a password redis://:PASSWORD@HOST:PORT/DB.",
        secret=True,
    )
    redis_timeout: float = setting(
        0.5,
        "Seconds to connect to Redis or wait for its answer (a decision takes it well under "
        "a millisecond); a Redis slower than this is treated as unreachable.",
    )
    on_redis_error: Literal["local", "deny"] = setting(
        "local",
        "What a replica does while Redis cannot be reached (refused, or no answer within "
        "redis_timeout). local: it counts alone, with its own limits, so each replica grants a key "
        "its whole limit; /health says degraded and llmgw_limiter_local_decisions_total "
        "counts. deny: requests are refused with 503 limiter_unavailable. Redis is tried "
        "every second; the shared limits resume as soon as it answers.",
    )


RoutingPolicyName = Literal["least-loaded", "prefix-affinity", "session", "round-robin"]
ROUTING_POLICIES: tuple[RoutingPolicyName, ...] = typing.get_args(RoutingPolicyName)


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    # (A Literal, so immutable: ruff does not see through the alias.)
    policy: RoutingPolicyName = setting(  # noqa: RUF009
        "least-loaded",
        "Which upstream serving a model a request goes to. least-loaded: the one with the "
        "fewest requests waiting and running in vLLM (its /metrics), plus those this "
        "gateway sent it since. prefix-affinity: the same upstream for the same prompt "
        "beginning (system prompt and leading messages), so vLLM's prefix cache has it, "
        "unless that one is busier than the least-loaded by more than margin. session: "
        "the same for a client's x-session-id header (else the body's user), with the "
        "same margin. round-robin: each in turn. The latter three agree across replicas "
        "without sharing anything.",
    )
    model_policies: tuple[str, ...] = setting(
        (),
        'Policies of particular models, overriding policy: "MODEL=POLICY" entries, e.g. '
        '["qwen-coder=prefix-affinity", "llama-chat=session"].',
    )
    margin: float = setting(
        4.0,
        "Requests an upstream may have beyond the least-loaded one's before a "
        "prefix-affinity or session request goes on to the next upstream in its order.",
    )
    metrics_interval: float = setting(
        1.0,
        "Seconds between two reads of each upstream's /metrics (vLLM's requests waiting "
        "and running, KV-cache use, prefix-cache hits); 0: never read, route by this "
        "gateway's own requests in flight (as for an upstream without those metrics).",
    )
    max_waiting: int = setting(
        32,
        "An upstream with more requests waiting in vLLM than this (or one that answered "
        "503 within the last metrics_interval, at least a second) is passed over while "
        "another has room; 0: no limit.",
    )

    def policy_of(self, model: str | None) -> RoutingPolicyName:
        """The policy of `model`: its own, else the default."""
        for entry in self.model_policies:
            name, _, chosen = entry.rpartition("=")
            if name == model:
                return typing.cast(RoutingPolicyName, chosen)
        return self.policy


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "debug, info, warning or error."
    )
    format: Literal["text", "json"] = setting(
        "text", "text (key=value) or json (one object per line, for log shippers)."
    )
    file: str = setting(
        "", "Log file; empty logs to stderr. The seed system kept logs/gateway.log."
    )


DEFAULT_TIERS: Mapping[str, TierSettings] = types.MappingProxyType(
    {
        "free": TierSettings(10, 100, priority=10),
        "standard": TierSettings(30, 300, priority=5),
        "premium": TierSettings(100, 1000, priority=0),
    }
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway reads at start-up; the help of each field describes a section."""

    server: ServerSettings = field(
        default=ServerSettings(),
        metadata=doc("The OpenAI-compatible API: where it listens, what it waits for."),
    )
    admin: AdminSettings = field(
        default=AdminSettings(),
        metadata=doc("Administration: the local admin socket and remote admin API tokens."),
    )
    database: DatabaseSettings = field(
        default=DatabaseSettings(),
        metadata=doc(
            "The database of keys, admin users, audit and usage records: a SQLite file (the "
            "default, needing no server) or PostgreSQL (for several replicas)."
        ),
    )
    upstreams: tuple[UpstreamSettings, ...] = setting(
        (UpstreamSettings("http://127.0.0.1:8100"),),
        "One [[upstreams]] table per vLLM server, at least one. A request goes to a healthy "
        "upstream that serves its model, chosen as [routing] says.",
    )
    tiers: Mapping[str, TierSettings] = field(
        default_factory=lambda: DEFAULT_TIERS,
        metadata=doc(
            "Rate-limit tiers: per key, requests per minute and per hour, and optionally "
            "tokens per minute and per day, requests at once, a token budget, and a priority "
            "at vLLM. These three are the defaults; a partial table changes only what it "
            "names, and new tiers may be added (they need the two request limits)."
        ),
    )
    limits: LimitsSettings = field(
        default=LimitsSettings(),
        metadata=doc("Where rate limits are counted: in this process, or shared in Redis."),
    )
    routing: RoutingSettings = field(
        default=RoutingSettings(),
        metadata=doc(
            "How a request's upstream is chosen among those serving its model, by vLLM's "
            "own load (read from its /metrics) and the request's prompt or session."
        ),
    )
    logging: LoggingSettings = field(
        default=LoggingSettings(), metadata=doc("How and where the gateway logs.")
    )

    @property
    def replica(self) -> str:
        """This gateway's name among the replicas (`[server] replica_name`)."""
        return self.server.replica_name or f"{socket.gethostname()}:{self.server.port}"

    @property
    def socket_path(self) -> Path:
        return Path(self.admin.socket) if self.admin.socket else default_socket_path()

    @property
    def database_path(self) -> Path:
        """The SQLite file (unless `postgres_url`)."""
        if self.database.url.startswith(SQLITE_SCHEME):
            return Path(self.database.url.removeprefix(SQLITE_SCHEME))
        return Path(self.database.path) if self.database.path else default_database_path()

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL database to use instead of a SQLite file, if one is set."""
        return self.database.url if self.database.url.startswith(POSTGRES_SCHEMES) else None


def default_socket_path() -> Path:
    if os.geteuid() == 0:
        return Path("/run/llmgw/admin.sock")
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "llmgw" / "admin.sock"
    return Path(f"/tmp/llmgw-{os.geteuid()}") / "admin.sock"  # noqa: S108


def default_database_path() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/llmgw/llmgw.db")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "llmgw" / "llmgw.db"


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: `--config`, else `LLMGW_CONFIG`, else the first that exists."""
    chosen = explicit or environ.get("LLMGW_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    return next((p for p in CONFIG_SEARCH_PATH if p.is_file()), None)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the file at `path` (if any), then the environment."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    sections = _check_keys(raw, _TOP_LEVEL, "")
    _apply_seed_env(sections, environ)
    _apply_llmgw_env(sections, environ)
    return _build(sections)


_TOP_LEVEL = {f.name for f in dataclasses.fields(Settings)}
_SIMPLE_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "admin": AdminSettings,
    "database": DatabaseSettings,
    "limits": LimitsSettings,
    "routing": RoutingSettings,
    "logging": LoggingSettings,
}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}{key}: unknown setting")
    return dict(table)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _section(sections: dict[str, Any], name: str, where: str = "") -> dict[str, Any]:
    """The table `name` of the file (created if absent), to override values in."""
    table = sections.setdefault(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}{name}]: expected a table")
    return table


def _apply_seed_env(sections: dict[str, Any], environ: Mapping[str, str]) -> None:
    """The seed system's `.env` names, so a team can move over without rewriting it."""
    if url := environ.get("VLLM_BASE_URL"):
        sections["upstreams"] = [{"url": url}]
    if db_url := environ.get("DATABASE_URL"):
        if db_url.startswith(SQLITE_SCHEME):
            _section(sections, "database")["path"] = db_url.removeprefix(SQLITE_SCHEME)
        elif db_url.startswith(POSTGRES_SCHEMES):
            _section(sections, "database")["url"] = db_url
        else:
            raise ConfigError(f"DATABASE_URL: expected {DATABASE_URL_FORMS}, got {_scheme(db_url)}")
    if port := environ.get("GATEWAY_PORT"):
        _section(sections, "server")["port"] = _convert(port, int, "GATEWAY_PORT")
    if secret := environ.get("ADMIN_SECRET_KEY"):
        _section(sections, "admin")["secret_key"] = secret
    for name, value in environ.items():
        if name.startswith("RATE_LIMIT_") and name.endswith(("_PER_MINUTE", "_PER_HOUR")):
            tier, _, window = name.removeprefix("RATE_LIMIT_").rpartition("_PER_")
            key = "requests_per_minute" if window == "MINUTE" else "requests_per_hour"
            tiers = _section(sections, "tiers")
            _section(tiers, tier.lower(), "tiers.")[key] = _convert(value, int, name)


def _apply_llmgw_env(sections: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith("LLMGW_") or name in NON_SETTING_ENV:
            continue
        rest = name.removeprefix("LLMGW_").lower()
        if rest == "upstreams":
            urls = [u.strip() for u in value.split(",") if u.strip()]
            sections["upstreams"] = [{"url": u} for u in urls]
            continue
        if rest.startswith("tiers_"):
            tier_and_key = rest.removeprefix("tiers_")
            # The longest field name the variable ends with: none is another's suffix
            # today (tokens_per_minute vs requests_per_minute), and none may become one.
            key = max(
                (k for k in _field_names(TierSettings) if tier_and_key.endswith(f"_{k}")),
                key=len,
                default=None,
            )
            tier = tier_and_key.removesuffix(f"_{key}") if key else ""
            if not key or not tier:
                raise ConfigError(f"{name}: unknown setting (expected LLMGW_TIERS_<NAME>_<KEY>)")
            _section(_section(sections, "tiers"), tier, "tiers.")[key] = value
            continue
        section, _, key = rest.partition("_")
        cls = _SIMPLE_SECTIONS.get(section)
        if cls is None or key not in _field_names(cls):
            raise ConfigError(f"{name}: unknown setting")
        _section(sections, section)[key] = value


def _build(sections: Mapping[str, Any]) -> Settings:
    built: dict[str, Any] = {}
    for name, cls in _SIMPLE_SECTIONS.items():
        if name in sections:
            built[name] = _build_dataclass(cls, _table(sections[name], name), f"[{name}] ")
    if "upstreams" in sections:
        built["upstreams"] = _build_upstreams(sections["upstreams"])
    if "tiers" in sections:
        built["tiers"] = _build_tiers(_table(sections["tiers"], "tiers"))
    settings = Settings(**built)
    _validate(settings)
    return settings


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{where}]: expected a table")
    return value


def _build_upstreams(value: Any) -> tuple[UpstreamSettings, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("[[upstreams]]: expected at least one [[upstreams]] table with a url")
    return tuple(
        _build_dataclass(UpstreamSettings, _table(item, "upstreams"), f"[[upstreams]] #{i + 1} ")
        for i, item in enumerate(value)
    )


def _build_tiers(value: Mapping[str, Any]) -> Mapping[str, TierSettings]:
    tiers = dict(DEFAULT_TIERS)
    for name, table in value.items():
        where = f"[tiers.{name}] "
        table = dict(_table(table, f"tiers.{name}"))
        if name in tiers:  # a partial override keeps the default tier's other values
            table = dataclasses.asdict(tiers[name]) | table
        elif missing := [k for k in ("requests_per_minute", "requests_per_hour") if k not in table]:
            # A new tier has no values to fall back on: say what it needs, and how.
            variable = f"LLMGW_TIERS_{name.upper()}_{missing[0].upper()}"
            raise ConfigError(
                f"{where}{missing[0]}: required setting is missing: a new tier needs both "
                f"requests_per_minute and requests_per_hour (in the file, or {variable})"
            )
        tiers[name] = _build_dataclass(TierSettings, table, where)
    return types.MappingProxyType(tiers)


def _build_dataclass(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    _check_keys(table, set(hints), where)
    values = {key: _convert(value, hints[key], f"{where}{key}") for key, value in table.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}{missing[0]}: required setting is missing")
    return cls(**values)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """`value` (from TOML, or a string from the environment) as `kind`, or ConfigError."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return value
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(
            _convert(item.strip() if isinstance(item, str) else item, item_kind, where)
            for item in items
            if item != ""
        )
    if kind is bool:
        return _to_bool(value, where)
    if kind in (int, float):
        return _to_number(value, kind, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _to_number(value: Any, kind: type[int] | type[float], where: str) -> int | float:
    noun = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {noun}, got {value!r}")
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected {noun}, got {value!r}") from None
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, int | float):
        return float(value)
    raise ConfigError(f"{where}: expected {noun}, got {value!r}")


def _validate(settings: Settings) -> None:
    server = settings.server
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"[server] port: must be between 0 and 65535, got {server.port}")
    for name in (
        "max_body_bytes",
        "header_timeout",
        "body_timeout",
        "keepalive_timeout",
        "upstream_connect_timeout",
        "upstream_timeout",
        "stream_idle_timeout",
        "health_check_interval",
    ):
        if getattr(server, name) <= 0:
            raise ConfigError(f"[server] {name}: must be greater than 0")
    for name in ("shutdown_grace_period", "shutdown_drain_delay"):
        if getattr(server, name) < 0:
            raise ConfigError(f"[server] {name}: must not be negative")
    db = settings.database
    if db.url and not (
        db.url.startswith(POSTGRES_SCHEMES)
        or (db.url.startswith(SQLITE_SCHEME) and db.url != SQLITE_SCHEME)
    ):
        raise ConfigError(f"[database] url: expected {DATABASE_URL_FORMS}, got {_scheme(db.url)}")
    if db.flush_interval <= 0 or db.batch_size < 1 or db.max_pending < 1:
        raise ConfigError("[database] flush_interval, batch_size, max_pending: must be positive")
    if db.key_sync_interval <= 0:
        raise ConfigError("[database] key_sync_interval: must be greater than 0")
    for i, upstream in enumerate(settings.upstreams, 1):
        if not upstream.url.startswith(("http://", "https://")):
            raise ConfigError(f"[[upstreams]] #{i} url: must start with http:// or https://")
    for name, tier in settings.tiers.items():
        _validate_tier(name, tier)
    if settings.admin.token_ttl <= 0:
        raise ConfigError("[admin] token_ttl: must be greater than 0")
    for entry in settings.admin.trusted_proxies:
        try:
            parse_network(entry)
        except ValueError as exc:
            raise ConfigError(f"[admin] trusted_proxies: {exc}") from None
    _validate_limits(settings.limits)
    _validate_routing(settings.routing)
    if settings.admin.default_tier not in settings.tiers:
        raise ConfigError(
            f"[admin] default_tier: no tier named {settings.admin.default_tier!r} "
            f"(tiers: {', '.join(settings.tiers)})"
        )


def _validate_tier(name: str, tier: TierSettings) -> None:
    if tier.requests_per_minute < 1 or tier.requests_per_hour < 1:
        raise ConfigError(f"[tiers.{name}]: request limits must be at least 1")
    for key in ("tokens_per_minute", "tokens_per_day", "max_in_flight", "budget_tokens"):
        if getattr(tier, key) < 0:
            raise ConfigError(f"[tiers.{name}] {key}: must not be negative (0: unlimited)")
    if tier.default_max_tokens < 1:
        raise ConfigError(f"[tiers.{name}] default_max_tokens: must be at least 1")


def check_replicas(settings: Settings) -> None:
    """What a gateway sharing its database with other replicas must have, checked at
    start (not on load: `llmgw` commands read the same settings only to find the
    socket). Tokens signed with a random per-process secret would be refused by every
    replica but the one that signed them, and die with it."""
    if settings.postgres_url and not settings.admin.secret_key:
        raise ConfigError(
            "[admin] secret_key: required with a PostgreSQL database, which replicas of "
            "the gateway share: set the same secret on every replica (in the file, or "
            "ADMIN_SECRET_KEY; `llmgw config init --secret` writes one)"
        )


def _validate_limits(limits: LimitsSettings) -> None:
    if limits.backend != "redis":
        return
    where = "[limits] redis_url"
    if not limits.redis_url:
        raise ConfigError(
            f'{where}: required when backend = "redis", as redis://HOST:PORT/DB '
            "(in the file, or LLMGW_LIMITS_REDIS_URL)"
        )
    # The URL itself stays out of the message: it may hold a password.
    url = urllib.parse.urlsplit(limits.redis_url)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{where}: expected redis://HOST:PORT/DB (or rediss://, unix://PATH), "
            f"not a {url.scheme or 'schemeless'} URL"
        )
    try:
        url.port  # noqa: B018 - parsed here to be checked
    except ValueError:
        raise ConfigError(f"{where}: the port must be a number from 0 to 65535") from None
    if url.scheme == "unix":
        if not url.path:
            raise ConfigError(f"{where}: expected unix://PATH, the path of Redis's socket")
    elif not url.hostname:
        raise ConfigError(f"{where}: expected redis://HOST:PORT/DB, with a host")
    elif not (url.path.strip("/") or "0").isdigit():
        raise ConfigError(f"{where}: the database after the port must be a number, as in /0")


def _validate_routing(routing: RoutingSettings) -> None:
    if routing.margin < 0 or routing.metrics_interval < 0 or routing.max_waiting < 0:
        raise ConfigError("[routing] margin, metrics_interval, max_waiting: must not be negative")
    for entry in routing.model_policies:
        model, _, chosen = entry.rpartition("=")
        if not model or chosen not in ROUTING_POLICIES:
            raise ConfigError(
                f'[routing] model_policies: expected "MODEL=POLICY" with POLICY one of '
                f"{', '.join(ROUTING_POLICIES)}, got {entry!r}"
            )


def _scheme(url: str) -> str:
    """What a database URL is, for an error message: not the rest, which may hold a
    password."""
    scheme, sep, _ = url.partition("://")
    return f"a {scheme}:// URL" if sep else "something else"
