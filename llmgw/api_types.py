"""The admin API's data, typed: what the handlers send, `AdminClient` returns, and the
CLI and the TUI read. One definition on both sides of the socket, checked by mypy,
instead of `dict[str, Any]` and `.get(...) or {}` guards."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict, get_args

# A budget's calendar period (UTC).
BudgetPeriod = Literal["day", "week", "month"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = get_args(BudgetPeriod)

# --- keys ---------------------------------------------------------------------------


class KeyView(TypedDict):
    """A key as the admin API shows it: never its secret or hash; times as ISO text."""

    id: int
    key_prefix: str
    user_id: str
    tier: str
    description: str
    is_active: bool
    created_at: str
    updated_at: str
    expires_at: str | None
    last_used_at: str | None
    allowed_models: list[str] | None
    requests_per_minute: int | None  # the key's own limits; None: its tier's
    requests_per_hour: int | None
    tokens_per_minute: int | None  # 0: unlimited for this key, whatever its tier says
    tokens_per_day: int | None
    max_in_flight: int | None
    budget_tokens: int | None
    budget_period: BudgetPeriod | None


class KeyDetail(KeyView):
    """`GET /keys/{id}`: the key, and each of its limits with what is left of it now."""

    limits: LimitsView | None  # None: the limits cannot be read (Redis gone, policy deny)


class UserBudget(TypedDict):
    """A token budget shared by all keys of a user (`PUT /users/{user_id}/budget`)."""

    user_id: str
    budget_tokens: int
    budget_period: BudgetPeriod


# A key's own limits, in KeyView's (and api_keys' column) order: None is the tier's.
KEY_LIMITS = (
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
    "budget_tokens",
    "budget_period",
)


class CreatedKey(KeyView):
    """A new (or rotated) key: the secret, shown this once."""

    key: str


class DeletedKey(KeyView):
    deleted: bool


class TierView(TypedDict):
    name: str
    requests_per_minute: int
    requests_per_hour: int
    tokens_per_minute: int  # 0: unlimited
    tokens_per_day: int
    max_in_flight: int
    budget_tokens: int
    budget_period: BudgetPeriod
    default_max_tokens: int
    priority: int


class Tiers(TypedDict):
    default: str
    data: list[TierView]


# --- admin users and the audit log ----------------------------------------------------


class AdminView(TypedDict):
    id: int
    username: str
    email: str | None
    is_active: bool
    created_at: str
    last_login: str | None
    password_changed_at: str | None


class LoginToken(TypedDict):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int


class AuditEntry(TypedDict):
    id: int
    timestamp: str
    actor: str
    door: str
    action: str
    target: str | None
    before: dict[str, object] | None
    after: dict[str, object] | None


# --- the ledger and usage -------------------------------------------------------------


class RequestRow(TypedDict):
    """One row of the ledger, as `GET /requests` lists it."""

    id: int
    request_id: str
    timestamp: str
    user_id: str
    api_key_id: int | None
    endpoint: str
    model: str | None
    status_code: int
    prompt_tokens: int
    completion_tokens: int
    usage_source: str
    duration_ms: float
    ttft_ms: float | None
    upstream: str | None


class UsageFigures(TypedDict):
    requests: int
    errors: int  # status >= 400 except 429
    rate_limited: int  # status 429
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class UsageGroup(UsageFigures):
    group: str | int | None  # the user, key id, model or day; None: none
    # by=key only: the key's id (as `group` too; None: no key), display prefix (None:
    # no key, or deleted since) and user (a ledger row always names one).
    key_id: NotRequired[int | None]
    key_prefix: NotRequired[str | None]
    user_id: NotRequired[str]


class UsageReport(TypedDict):
    days: int
    by: str
    since: str
    data: list[UsageGroup]
    total: UsageFigures


class PruneResult(TypedDict):
    deleted: int
    before: str


# --- health and live statistics -------------------------------------------------------


class LedgerStatus(TypedDict):
    pending: int
    written: int
    dropped: int
    rejected: int
    failed_writes: int
    last_error: str | None


class DatabaseStatus(TypedDict):
    ok: bool
    error: str | None
    checked_s_ago: float | None
    written_s_ago: float | None


class KeysStatus(TypedDict):
    count: int  # keys in this replica's table (revoked and expired ones included)
    version: int  # the newest change of the key change log applied to it
    synced_s_ago: float  # since the log was last read (every key_sync_interval at most)
    listening: bool  # hearing other replicas' changes at once (PostgreSQL only)
    error: str | None  # why the last read or listen failed, until one succeeds


class LimitsStatus(TypedDict):
    backend: Literal["memory", "redis"]
    shared: bool  # decided together with the other replicas (in Redis) now
    error: str | None  # why not, while Redis cannot be reached
    local_decisions: int  # admissions this replica decided alone while Redis was away


class UpstreamStatus(TypedDict):
    url: str
    healthy: bool
    in_flight: int
    latency_ms: float | None
    models: list[str]
    last_error: str | None
    checked_at: str | None
    # Issue 17: vLLM's load, summed over the models it serves, from its /metrics (None
    # where not read); `load` is what routing compares (in flight where not read).
    load: float
    waiting: int | None
    running: int | None
    kv_cache_usage: float | None  # 0..1
    prefix_cache_hit_rate: float | None  # since the server started
    full: bool  # passed over while another upstream has room


class Health(TypedDict):
    replica: str  # which gateway answered: `[server] replica_name`, else HOST:PORT
    status: Literal["ok", "degraded", "unavailable"]
    draining: bool
    uptime_s: float
    in_flight: int
    keys: KeysStatus
    database: DatabaseStatus
    ledger: LedgerStatus
    limits: LimitsStatus
    upstreams: list[UpstreamStatus]


class Rate(TypedDict):
    requests: int
    tokens: int
    errors: int
    rate_limited: int
    requests_per_s: float
    tokens_per_s: float


class LiveTotals(TypedDict):
    """Per-second series over the snapshot's seconds, oldest first; and what is open."""

    tokens: list[int]
    requests: list[int]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    errors: list[int]
    rate_limited: list[int]
    streams: int


class KeyActivity(TypedDict):
    key_id: int
    requests_per_s: float
    tokens_per_s: float
    requests: int
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    rate_limited: int
    streams: int


class LiveSnapshot(TypedDict):
    """What `LiveStats` counted: the last seconds of traffic."""

    now: float
    window: int
    seconds: int
    start: int
    total: LiveTotals
    rates: dict[str, Rate]
    keys_active: int
    keys: list[KeyActivity]


class WindowBudget(TypedDict):
    limit: int
    remaining: int
    reset_s: float


class InFlightView(TypedDict):
    limit: int
    current: int  # requests of the key being served now


class BudgetView(TypedDict):
    """A token budget for a calendar period (UTC), a key's or its user's."""

    limit: int
    used: int
    remaining: int  # 0 once spent (used may exceed limit: a request settles what it used)
    period: BudgetPeriod
    renews_at: str  # ISO UTC: the start of the next period


class LimitsView(TypedDict):
    """Each limit of a key as it applies now, and what is left of it; None where the
    limit is off (0 = unlimited)."""

    requests_per_minute: WindowBudget
    requests_per_hour: WindowBudget
    tokens_per_minute: WindowBudget | None
    tokens_per_day: WindowBudget | None
    in_flight: InFlightView | None
    key_budget: BudgetView | None
    user_budget: BudgetView | None


class BusyKey(KeyActivity):
    """A busy key with who it is and what is left of its limits (null once deleted)."""

    key_prefix: str | None
    user_id: str | None
    tier: str | None
    limits: LimitsView | None  # None: deleted, or the limits cannot be read (Redis gone)


class StatsTotals(LiveTotals):
    in_flight: int


class Stats(TypedDict):
    """`GET /stats`: the live snapshot with what the gateway knows besides."""

    replica: str  # the live figures are this gateway's alone
    now: float
    window: int
    seconds: int
    start: int
    total: StatsTotals
    rates: dict[str, Rate]
    keys_active: int
    keys: list[BusyKey]
    upstreams: list[UpstreamStatus]
    ledger: LedgerStatus
