"""The SMART on FHIR authorisation server: signing keys and tokens (more to come)."""

from __future__ import annotations

from smart.keys import (
    DEFAULT_ALG,
    DEFAULT_RETIRE_AFTER,
    SIGNING_ALGORITHMS,
    KeyRing,
    KeyRingError,
    SigningKey,
)
from smart.tokens import (
    ACCESS_TOKEN_TYPE,
    JwtTokenVerifier,
    RevocationCheck,
    mint_access_token,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "DEFAULT_ALG",
    "DEFAULT_RETIRE_AFTER",
    "SIGNING_ALGORITHMS",
    "JwtTokenVerifier",
    "KeyRing",
    "KeyRingError",
    "RevocationCheck",
    "SigningKey",
    "mint_access_token",
]
