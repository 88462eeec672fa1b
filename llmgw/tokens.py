"""Remote admin API tokens: JWTs signed with HMAC-SHA256 (RFC 7519, `alg: HS256`).

Small enough to keep in the standard library: base64url, HMAC, and a constant-time
comparison. Only HS256 is accepted, whatever a token's header claims, so a forged
`alg: none` token is simply refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

_HEADER = base64.urlsafe_b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"})).rstrip(b"=")


class InvalidToken(ValueError):
    """The token is malformed, forged or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    username: str
    issued_at: float
    expires_at: float


def issue(secret: bytes, username: str, now: float, ttl: float) -> str:
    payload = {"sub": username, "iat": round(now, 3), "exp": round(now + ttl, 3)}
    signing_input = _HEADER + b"." + _b64(orjson.dumps(payload))
    return (signing_input + b"." + _b64(_sign(secret, signing_input))).decode()


def verify(secret: bytes, token: str, now: float) -> TokenClaims:
    # A token is base64url and dots. (A header's bytes that are not UTF-8 reach us as
    # lone surrogates, which would not even encode.)
    if not token.isascii():
        raise InvalidToken("malformed token")
    parts = token.encode().split(b".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    header, payload, signature = parts
    try:
        expected = _sign(secret, header + b"." + payload)
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise InvalidToken("bad signature")
        if orjson.loads(_unb64(header)).get("alg") != "HS256":
            raise InvalidToken("unsupported algorithm")
        claims: Any = orjson.loads(_unb64(payload))
        username, issued, expires = claims["sub"], float(claims["iat"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, InvalidToken):
            raise
        raise InvalidToken("malformed token") from None
    if not isinstance(username, str) or now >= expires:
        raise InvalidToken("token expired")
    return TokenClaims(username, issued, expires)


def _sign(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
