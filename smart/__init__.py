"""The SMART on FHIR authorisation server: keys and tokens, clients, users and
roles, the authorize/token/introspect/revoke endpoints and launch contexts."""

from __future__ import annotations

from smart.config import AuthConfig
from smart.discovery import oauth_uris, smart_configuration
from smart.keys import (
    DEFAULT_ALG,
    DEFAULT_RETIRE_AFTER,
    SIGNING_ALGORITHMS,
    KeyRing,
    KeyRingError,
    SigningKey,
)
from smart.launch import Launches
from smart.server import AuthServer
from smart.tokens import (
    ACCESS_TOKEN_TYPE,
    JwtTokenVerifier,
    RevocationCheck,
    mint_access_token,
)
from smart.users import Accounts, LockedOut, UserDatabase, UserManager

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "Accounts",
    "AuthConfig",
    "AuthServer",
    "Launches",
    "LockedOut",
    "UserDatabase",
    "UserManager",
    "oauth_uris",
    "smart_configuration",
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
