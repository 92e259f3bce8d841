"""Secret values: random tokens, their storage digests, password hashes, PKCE.

Codes, refresh tokens and launch values are high-entropy, so a SHA-256
digest is enough to store them; passwords and client secrets may be weak,
so they get Argon2id (pwdlib, as fastapi-users uses it) with the OWASP
parameters (19 MiB, 2 passes), run off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi_users.password import PasswordHelper
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

# RFC 7636 §4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"
_VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def new_token() -> str:
    """A fresh unguessable value (256 bits)."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """The storage key of a code, refresh token or launch value."""
    return hashlib.sha256(value.encode()).hexdigest()


def password_helper() -> PasswordHelper:
    """fastapi-users' password helper with Argon2id at the OWASP parameters."""
    hasher = Argon2Hasher(time_cost=2, memory_cost=19456, parallelism=1)
    return PasswordHelper(PasswordHash((hasher,)))


async def hash_secret(helper: PasswordHelper, secret: str) -> str:
    """Hash a password or client secret in a worker thread."""
    return await asyncio.to_thread(helper.hash, secret)


async def verify_secret(helper: PasswordHelper, secret: str, hashed: str) -> bool:
    """Check a password or client secret in a worker thread."""
    verified, _ = await asyncio.to_thread(helper.verify_and_update, secret, hashed)
    return bool(verified)


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether ``verifier`` answers the S256 ``challenge`` (RFC 7636 §4.6)."""
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= _VERIFIER_CHARS:
        return False
    computed: str = create_s256_code_challenge(verifier)
    return hmac.compare_digest(computed, challenge)
