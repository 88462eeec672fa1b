"""Routing policies: the order in which a request's upstreams are tried.

Each policy orders the healthy upstreams that serve the model, best first; the rest of
the order is where a request fails over to while nothing has reached the client.

- `least-loaded`: the upstream with the fewest requests (the others' as vLLM's waiting +
  running last counted them, plus this gateway's own open there now; in-flight counts
  where vLLM's are not known).
- `round-robin`: each in turn.
- `prefix-affinity` and `session`: rendezvous hashing (highest random weight) of a key
  (the request's prefix, or its session) over the upstreams, so every replica of the
  gateway agrees without sharing any state, and an upstream leaving moves only its own
  keys. Load is bounded: when the chosen upstream carries more than `margin` requests
  beyond the least-loaded one, the key goes to the next upstream in its rendezvous order
  that does not.

Policies are pure: they see the upstreams' loads as numbers, so they are tested with
made-up loads and cost no I/O on the request path.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import RoutingPolicyName

# How much of a request's beginning makes its prefix: enough to tell a team's system
# prompt or a conversation's opening turns apart, little enough to hash in microseconds.
PREFIX_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Choice:
    """An upstream as a policy sees it."""

    url: str
    load: float  # requests waiting and running on it, as well as the gateway knows


class Policy(Protocol):
    def order(self, upstreams: Sequence[Choice], key: str | None) -> list[Choice]:
        """`upstreams`, best first; `key` is the request's routing key, if any."""


class LeastLoaded:
    def order(self, upstreams: Sequence[Choice], key: str | None) -> list[Choice]:
        return sorted(upstreams, key=lambda u: u.load)


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def order(self, upstreams: Sequence[Choice], key: str | None) -> list[Choice]:
        if not upstreams:
            return []
        start = next(self._turn) % len(upstreams)
        return [*upstreams[start:], *upstreams[:start]]


class Rendezvous:
    """Rendezvous hashing with bounded load: `prefix-affinity` and `session` alike,
    differing only in the key they are given. A request without a key is routed to the
    least-loaded upstream."""

    def __init__(self, margin: float) -> None:
        self._margin = margin
        self._sites: dict[str, int] = {}  # each upstream's own hash, made once

    def order(self, upstreams: Sequence[Choice], key: str | None) -> list[Choice]:
        if key is None:
            return LeastLoaded().order(upstreams, key)
        digest = key_digest(key)  # the long key hashed once, not once an upstream
        ranked = sorted(upstreams, key=lambda u: weight(digest, self._site(u.url)), reverse=True)
        if not ranked:
            return ranked
        ceiling = min(u.load for u in ranked) + self._margin
        within = [u for u in ranked if u.load <= ceiling]
        return within + [u for u in ranked if u.load > ceiling]

    def _site(self, url: str) -> int:
        site = self._sites.get(url)
        if site is None:
            site = self._sites[url] = site_hash(url)
        return site


_MASK = (1 << 64) - 1


def key_digest(key: str) -> int:
    """A routing key as 64 bits: SHA-1 (hardware-accelerated where OpenSSL can: hashing
    a 4 KB prefix is most of a decision's cost), not Python's salted hash, so that every
    replica computes the same."""
    try:
        data = key.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\\ud800"): the slow way
        data = key.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha1(data, usedforsecurity=False).digest()[:8], "big")


def site_hash(upstream: str) -> int:
    """An upstream's URL as 64 bits (blake2b: the same in every process)."""
    return int.from_bytes(hashlib.blake2b(upstream.encode(), digest_size=8).digest(), "big")


def weight(digest: int, site: int) -> int:
    """The rendezvous weight of an upstream (`site_hash`) for a key (`key_digest`): the
    two mixed by SplitMix64's finaliser, so that every bit of each moves the result and
    a key's order over the upstreams is as good as random, and fixed."""
    z = ((digest ^ site) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def policy(name: RoutingPolicyName, margin: float = 4.0) -> Policy:
    if name == "least-loaded":
        return LeastLoaded()
    if name == "round-robin":
        return RoundRobin()
    return Rendezvous(margin)


def prefix_key(payload: Mapping[str, Any]) -> str | None:
    """The beginning of what the request asks the model to read, whichever API it is in:
    the system prompt and leading messages (chat, Anthropic's `system` and
    `messages`), the Responses API's `instructions` and `input`, or a completion's
    prompt; at most `PREFIX_CHARS` characters. None when it has none."""
    parts: list[str] = []
    size = 0
    for value in (
        payload.get("system"),
        payload.get("instructions"),
        payload.get("messages"),
        payload.get("input"),
        payload.get("prompt"),
    ):
        for text in _texts(value):
            # (cut before joining: a long system prompt is not copied whole)
            parts.append(text[:PREFIX_CHARS])
            size += len(text)
            if size >= PREFIX_CHARS:
                return "\n".join(parts)[:PREFIX_CHARS]
    return "\n".join(parts) if parts else None


def session_key(headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
    """A client's session: its `x-session-id` header, else the body's `user` (or, on the
    Messages API, `metadata.user_id`, where Claude Code names its session)."""
    session = headers.get("x-session-id")
    if session:
        return session
    metadata = payload.get("metadata")
    claude = metadata.get("user_id") if isinstance(metadata, dict) else None
    for user in (payload.get("user"), claude):
        if isinstance(user, str) and user:
            return user
    return None


def routing_key(
    name: RoutingPolicyName, headers: Mapping[str, str], payload: Mapping[str, Any]
) -> str | None:
    """What policy `name` routes a request by: its prefix, its session, or nothing."""
    if name == "prefix-affinity":
        return prefix_key(payload)
    if name == "session":
        return session_key(headers, payload)
    return None


def _texts(value: Any) -> Iterator[str]:
    """The texts of a prompt, message list or content, in order (lazily: the prefix
    usually ends within the first message)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        yield from _texts(value.get("text"))
        yield from _texts(value.get("content"))
