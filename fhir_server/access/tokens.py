"""The token seam: how a bearer token becomes an ``AuthContext``.

The kernel only declares the port; ``smart`` implements it (signed JWTs
today, introspection or revocation lists later) and the composition root
injects it. Failures are 401s carrying the ``WWW-Authenticate`` challenge of
RFC 6750 §3.
"""

from __future__ import annotations

import re
from typing import Protocol

from fhir_server.access.context import AuthContext
from fhir_server.errors import Unauthorized

REALM = "radhub"

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenVerifier(Protocol):
    """Turns a bearer token into the context it grants."""

    async def verify(self, token: str) -> AuthContext:
        """Return the token's context, or raise ``Unauthorized`` (see ``invalid_token``)."""
        ...


def bearer_challenge(**params: str) -> str:
    """A ``WWW-Authenticate`` value: ``Bearer realm="radhub", error="..."``."""
    items = {"realm": REALM, **params}
    return "Bearer " + ", ".join(f'{k}="{_quoted(v)}"' for k, v in items.items())


def invalid_token(description: str) -> Unauthorized:
    """The 401 for a token that is expired, tampered with, or not ours (RFC 6750 §3.1)."""
    challenge = bearer_challenge(error="invalid_token", error_description=description)
    return Unauthorized(f"invalid token: {description}", headers={"WWW-Authenticate": challenge})


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header.

    Raises Unauthorized with a bare challenge when no bearer credentials are
    present (RFC 6750 §3.1: no error code then), and ``invalid_token`` when
    the credentials are malformed.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized(
            "a bearer token is required",
            headers={"WWW-Authenticate": bearer_challenge()},
        )
    token = credentials.strip()
    if not _B64TOKEN.fullmatch(token):
        raise invalid_token("malformed bearer token")
    return token


def _quoted(value: str) -> str:
    # A quoted-string may not hold raw quotes, backslashes or control characters.
    cleaned = "".join(c for c in value if c.isprintable())
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')
