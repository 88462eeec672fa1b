"""Admin passwords: argon2 through passlib (the maintained `libpass` fork).

Hashing and verifying cost tens of milliseconds of CPU on purpose, so both run in a
worker thread and never stall the event loop that serves requests.
"""

from __future__ import annotations

import asyncio
import functools

from passlib.hash import argon2

MIN_LENGTH = 12


@functools.cache
def _dummy_hash() -> str:
    # Verified when the user does not exist, so a login takes as long either way and
    # does not reveal which usernames exist.
    hashed: str = argon2.hash("not a password of anyone's")
    return hashed


def check_strength(password: str) -> str | None:
    """Why `password` is not acceptable, or None."""
    if len(password) < MIN_LENGTH:
        return f"the password must have at least {MIN_LENGTH} characters"
    return None


async def hash_password(password: str) -> str:
    hashed: str = await asyncio.to_thread(argon2.hash, password)
    return hashed


async def verify_password(password: str, hashed: str | None) -> bool:
    ok: bool = await asyncio.to_thread(argon2.verify, password, hashed or _dummy_hash())
    return ok and hashed is not None
