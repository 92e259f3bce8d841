"""Login tickets: the proof, carried from the login page to the consent page,
that this user signed in for this very authorize request.

A ticket is a short-lived JWT signed with the server's key, typed
``login+jwt`` so it can never pass for an access token, naming the user and
the digest of the authorize request's parameters; it also serves as the
consent form's CSRF token (only the signed-in browser holds it).

A ticket decides one consent: its ``jti`` is spent through the store's
one-time ``jti`` record when the user approves or denies, so a ticket copied
from the page (or the form resent) cannot mint a second authorization code.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

from fhir_server.storage.auth_port import AuthData
from smart.keys import KeyRing
from smart.secrets import digest

TICKET_TYPE = "login+jwt"


@dataclass(frozen=True, slots=True)
class SignedIn:
    """What a valid ticket proves: who signed in, when, in which sign-in session (its
    hash: the consent counts only while that session does), and the ticket's one-time id."""

    user_id: str
    auth_time: float
    jti: str
    expires_at: float
    session: str = ""


def request_digest(params: Mapping[str, str]) -> str:
    """A digest of the authorize request (parameters in a canonical order)."""
    return digest(json.dumps(sorted(params.items()), separators=(",", ":")))


class Tickets:
    """Issues and checks login tickets."""

    def __init__(
        self,
        keyring: KeyRing,
        audience: str,
        spent: AuthData,
        ttl: int = 600,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._spent = spent
        self._audience = audience
        self._ttl = ttl
        self._clock = clock

    def issue(self, user_id: str, params: Mapping[str, str], auth_time: float, session: str) -> str:
        now = int(self._clock())
        claims = {
            "sub": user_id,
            "aud": self._audience,
            "iat": now,
            "exp": now + self._ttl,
            "req": request_digest(params),
            "auth_time": int(auth_time),
            "jti": secrets.token_urlsafe(16),
            "sid": session,
        }
        key = self._keyring.active_key
        header = {"alg": key.alg, "kid": key.kid, "typ": TICKET_TYPE}
        return jwt.encode(header, claims, key.jwk, algorithms=[key.alg])

    def check(self, ticket: str, params: Mapping[str, str]) -> SignedIn | None:
        """Who signed in, if the ticket is ours, current, and for ``params``.

        Checking does not spend the ticket (the consent page may be shown again,
        say to pick a patient); ``spend`` does."""
        try:
            header = jws.extract_compact(ticket.encode("ascii")).headers()
            key = self._keyring.get(str(header.get("kid")))
            if key is None or header.get("typ") != TICKET_TYPE:
                return None
            claims = jwt.decode(ticket, key.jwk, algorithms=[key.alg]).claims
            JWTClaimsRegistry(
                now=lambda: int(self._clock()),
                aud={"essential": True, "value": self._audience},
                exp={"essential": True},
                sub={"essential": True},
                jti={"essential": True},
            ).validate(claims)
        except (JoseError, ValueError, TypeError, UnicodeEncodeError):
            return None
        if claims.get("req") != request_digest(params):
            return None
        return SignedIn(
            str(claims["sub"]),
            float(claims.get("auth_time", 0)),
            str(claims["jti"]),
            float(claims["exp"]),
            str(claims.get("sid", "")),
        )

    async def spend(self, signed_in: SignedIn) -> bool:
        """Use the ticket up; False if it was used before (a replayed consent)."""
        return await self._spent.use_jti(f"login-ticket:{signed_in.jti}", signed_in.expires_at)
