"""Access tokens: JWTs signed with the server's key, and their verifier.

Tokens follow RFC 9068 (JWT profile for OAuth 2.0 access tokens): header
``typ: at+jwt``, claims ``iss``, ``aud`` (the FHIR base URL), ``sub``,
``client_id``, ``exp``, ``iat``, ``nbf``, ``jti`` and ``scope``, plus the SMART
launch context (``patient``, ``encounter``, ``fhirUser``) and ``roles``.
``radhub token`` and the SMART authorisation server both mint through here.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwt import JWTClaimsRegistry

from fhir_server.access import AuthContext, ScopeSet, invalid_token
from smart.keys import Clock, KeyRing, SigningKey

ACCESS_TOKEN_TYPE = "at+jwt"
MAX_TOKEN_BYTES = 16 * 1024
DEFAULT_LEEWAY = 30

RevocationCheck = Callable[[str], Awaitable[bool]]
"""``is_revoked(jti)``: the hook the authorisation server plugs revocation into."""


def mint_access_token(
    keyring: KeyRing,
    *,
    issuer: str,
    audience: str,
    scope: str,
    subject: str,
    client_id: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    fhir_user: str | None = None,
    roles: Iterable[str] = (),
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """Sign an access token with the keyring's active key.

    See https://www.rfc-editor.org/rfc/rfc9068#section-2
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(16),
        "scope": scope,
    }
    optional = {"client_id": client_id, "patient": patient, "encounter": encounter}
    claims.update({k: v for k, v in optional.items() if v is not None})
    if fhir_user is not None:
        claims["fhirUser"] = fhir_user
    if role_list := sorted(set(roles)):
        claims["roles"] = role_list
    key = keyring.active_key
    header = {"alg": key.alg, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    return jwt.encode(header, claims, key.jwk, algorithms=[key.alg])


class JwtTokenVerifier:
    """Verifies tokens signed by ``keyring`` for this server (implements TokenVerifier).

    Only the asymmetric algorithm each key was issued for is accepted, so
    ``alg: none`` and HMAC signed with the public key are refused; the key is
    chosen by ``kid`` among the keyring's verifying keys.
    """

    def __init__(
        self,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        *,
        clock: Clock = time.time,
        leeway: int = DEFAULT_LEEWAY,
        is_revoked: RevocationCheck | None = None,
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._is_revoked = is_revoked
        self._claims = JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
        )

    async def verify(self, token: str) -> AuthContext:
        """Check signature, type and claims; return the context the token grants."""
        claims = self._decode(token)
        if self._is_revoked is not None and await self._is_revoked(claims["jti"]):
            raise invalid_token("token revoked")
        return _context(claims)

    def _decode(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_token("token too large")
        try:
            key = self._key_for(token)
            claims = jwt.decode(token, key.jwk, algorithms=[key.alg]).claims
            self._claims.validate(claims)
        except ExpiredTokenError as exc:
            raise invalid_token("token expired") from exc
        except MissingClaimError as exc:
            raise invalid_token(f"missing claim {exc.claim}") from exc
        except ClaimError as exc:
            raise invalid_token(f"invalid claim {exc.claim}") from exc
        except BadSignatureError as exc:
            raise invalid_token("bad signature") from exc
        except (JoseError, ValueError, TypeError) as exc:
            raise invalid_token("malformed token") from exc
        return claims

    def _key_for(self, token: str) -> SigningKey:
        header = jws.extract_compact(token.encode("ascii")).headers()
        if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
            raise invalid_token("not an access token")
        kid = header.get("kid")
        key = self._keyring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise invalid_token("unknown signing key")
        if header.get("alg") != key.alg:
            raise invalid_token("unexpected signing algorithm")
        return key


def _context(claims: dict[str, Any]) -> AuthContext:
    roles = claims.get("roles", [])
    scope = claims.get("scope", "")
    if not isinstance(scope, str) or not _strings(roles):
        raise invalid_token("malformed claims")
    return AuthContext(
        subject=claims["sub"],
        client_id=_optional_str(claims, "client_id"),
        scopes=ScopeSet.parse(scope),
        patient=_optional_str(claims, "patient"),
        encounter=_optional_str(claims, "encounter"),
        fhir_user=_optional_str(claims, "fhirUser"),
        roles=frozenset(roles),
        token_id=claims["jti"],
    )


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_token(f"invalid claim {name}")
    return value
