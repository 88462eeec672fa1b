"""API keys: how they are made, how they are stored, and the in-memory table that
authenticates every request.

A key is `sk-internal-` plus 32 random bytes (URL-safe base64). Only its SHA-256 digest
is stored; the plaintext exists once, in the answer to the admin who created it. The
request path never touches the database: `KeyTable` is loaded at start and updated in
place by every admin change, so a revoke applies to the very next request and a slow or
locked database never turns into 401s.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from .api_types import BudgetPeriod, KeyView
from .errors import GatewayError
from .times import iso_utc, parse_iso

KEY_PREFIX = "sk-internal-"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 4


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # A header's bytes that are not UTF-8 reach us as lone surrogates (aiohttp decodes
    # with surrogateescape); hashed as the bytes sent, they are simply no key of ours.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


# The gateway never writes a key out on purpose, but a client can put one where a log
# line or an error message quotes the request: a key pasted into the URL path ends up
# in the access line's `path` and in the 404's message. Whatever follows the display
# prefix (the part the admin API shows anyway) is cut, so no log line, of ours or of a
# library, and no error message carries a usable key. A bare display prefix (the access
# line's `key_prefix`) is one character too short to match.
_SHOWN = DISPLAY_PREFIX_LEN - len(KEY_PREFIX)
_KEY = re.compile(re.escape(KEY_PREFIX) + rf"[A-Za-z0-9_-]{{{_SHOWN + 1},}}")


def redact_keys(text: str) -> str:
    """`text` with every API key in it cut down to its display prefix."""
    if KEY_PREFIX not in text:  # the common case: no regex
        return text
    return _KEY.sub(lambda m: m[0][:DISPLAY_PREFIX_LEN] + "[redacted]", text)


_RELATIVE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_expiry(text: str, now: float) -> float:
    """`2027-01-31` (midnight UTC), an ISO datetime, or `30d` / `12h` / `2w` from now."""
    if match := _RELATIVE.match(text):
        return now + int(match[1]) * _UNIT[match[2]].total_seconds()
    try:
        return parse_iso(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read expiry {text!r}: use a date (2027-01-31), an ISO datetime "
            "(2027-01-31T18:00:00Z) or a duration from now (30d, 12h, 2w)"
        ) from None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One row of `api_keys`, as the request path needs it (times as epoch seconds)."""

    id: int
    key_hash: str
    key_prefix: str
    user_id: str
    tier: str
    description: str
    is_active: bool
    created_at: float
    updated_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    allowed_models: tuple[str, ...] | None = None
    # The key's own limits, over its tier's; None: the tier's, 0 (token, in-flight and
    # budget limits): unlimited for this key whatever its tier says.
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_in_flight: int | None = None
    budget_tokens: int | None = None
    budget_period: BudgetPeriod | None = None
    # The budget of the key's user, shared by all the user's keys (the `user_budgets`
    # row, read with the key); None: the user has none.
    user_budget_tokens: int | None = None
    user_budget_period: BudgetPeriod | None = None

    def may_use(self, model: str | None) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def public(self) -> KeyView:
        """The admin API's view: everything but the hash, times as ISO text."""
        return KeyView(
            id=self.id,
            key_prefix=self.key_prefix,
            user_id=self.user_id,
            tier=self.tier,
            description=self.description,
            is_active=self.is_active,
            created_at=iso_utc(self.created_at),
            updated_at=iso_utc(self.updated_at),
            expires_at=_iso_or_none(self.expires_at),
            last_used_at=_iso_or_none(self.last_used_at),
            allowed_models=list(self.allowed_models) if self.allowed_models else None,
            requests_per_minute=self.requests_per_minute,
            requests_per_hour=self.requests_per_hour,
            tokens_per_minute=self.tokens_per_minute,
            tokens_per_day=self.tokens_per_day,
            max_in_flight=self.max_in_flight,
            budget_tokens=self.budget_tokens,
            budget_period=self.budget_period,
        )


def _iso_or_none(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


class KeyTable:
    """The live keys by hash: the only thing the request path consults to authenticate."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        self._hash_by_id: dict[int, str] = {}
        for key in keys:
            self.put(key)

    def __len__(self) -> int:
        return len(self._by_hash)

    def put(self, key: ApiKey) -> None:
        old_hash = self._hash_by_id.get(key.id)
        if old_hash is not None and old_hash != key.key_hash:  # a rotation
            del self._by_hash[old_hash]
        self._by_hash[key.key_hash] = key
        self._hash_by_id[key.id] = key.key_hash

    def get(self, key_id: int) -> ApiKey | None:
        """The key with this id (revoked or expired included); None once deleted."""
        key_hash = self._hash_by_id.get(key_id)
        return None if key_hash is None else self._by_hash[key_hash]

    def remove(self, key_id: int) -> None:
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is not None:
            del self._by_hash[key_hash]

    def authenticate(self, presented: str | None, now: float) -> ApiKey:
        """The active key `presented` names, or a 401 `GatewayError`.

        Lookup is by digest only, so the time taken does not depend on how much of a
        guessed key is right.
        """
        if not presented:
            raise _unauthorized(
                "You didn't provide an API key. Send it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY) or in an x-api-key header.",
                None,
            )
        key = self._by_hash.get(hash_key(presented))
        if key is None:
            raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
        if not key.is_active:
            raise _unauthorized("This API key has been revoked.", "invalid_api_key")
        if key.expires_at is not None and now >= key.expires_at:
            raise _unauthorized(
                f"This API key expired at {iso_utc(key.expires_at)}.", "invalid_api_key"
            )
        return key


def presented_key(authorization: Sequence[str], x_api_key: Sequence[str]) -> str | None:
    """The key a request carries, from `Authorization: Bearer` or `x-api-key`: every
    value of each (`headers.getall(name, ())`).

    Two different keys are refused with 400: which one is meant, and charged, would be
    a guess. The same key in both headers (as some clients send it) is that key.
    """
    if len(authorization) == 1 and not x_api_key:  # the usual request
        return _bearer(authorization[0])
    keys = {_bearer(value) for value in authorization}
    keys.update(value.strip() for value in x_api_key)
    keys.discard(None)
    keys.discard("")
    if len(keys) > 1:
        raise GatewayError(
            400,
            "The request carries more than one API key (in Authorization or x-api-key "
            "headers); send one key, in one header.",
            code="ambiguous_api_key",
        )
    return keys.pop() if keys else None


def _bearer(authorization: str) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(
            "Malformed Authorization header: expected 'Authorization: Bearer YOUR_KEY'.",
            "invalid_api_key",
        )
    return token.strip()


def _unauthorized(message: str, code: str | None) -> GatewayError:
    return GatewayError(401, message, type_="invalid_request_error", code=code)
