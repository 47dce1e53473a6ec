"""Password hashing with argon2id, off the event loop (a hash takes tens of ms)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gemini_graphql.errors import invalid_input

MIN_LENGTH = 8
MAX_LENGTH = 128

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when there is no real hash, so a wrong number costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("dummy password for constant-time misses")


def validate_new_password(password: str, field: str) -> None:
    if len(password) < MIN_LENGTH:
        raise invalid_input(field, f"The password must have at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise invalid_input(field, f"The password must have at most {MAX_LENGTH} characters.")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; takes the same time when there is no hash."""
    if len(password) > MAX_LENGTH:  # could never have been set; do not hash megabytes
        return False

    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
