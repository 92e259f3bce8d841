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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
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
    jti: str | None = None,
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
        "jti": jti or secrets.token_urlsafe(16),
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


@dataclass(frozen=True, slots=True)
class _Verified:
    context: AuthContext
    expires: int
    not_before: Any
    kid: str


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
        cache_size: int = 4096,
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._leeway = leeway
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._cache_size = cache_size
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
        cached = self._cached(token)
        if cached is None:
            claims = self._decode(token)
            kid = str(jws.extract_compact(token.encode("ascii")).headers().get("kid"))
            cached = _Verified(_context(claims), int(claims["exp"]), claims.get("nbf"), kid)
            self._remember(token, cached)
        if self._is_revoked is not None and await self._is_revoked(cached.context.token_id or ""):
            raise invalid_token("token revoked")
        return cached.context

    def _cached(self, token: str) -> _Verified | None:
        """A token verified before, if it is still within its validity window.

        A signature check costs more than the rest of a small read, and clients
        send the same token for an hour: verify once, re-check the clock each time.
        """
        hit = self._cache.get(token)
        if hit is None:
            return None
        now = self._clock()
        if now >= hit.expires + self._leeway:
            del self._cache[token]
            raise invalid_token("token expired")
        if self._keyring.get(hit.kid) is None:
            # its signing key was retired since: verify afresh (and fail)
            del self._cache[token]
            return None
        if isinstance(hit.not_before, int | float) and now + self._leeway < hit.not_before:
            raise invalid_token("token not yet valid")
        self._cache.move_to_end(token)
        return hit

    def _remember(self, token: str, verified: _Verified) -> None:
        self._cache[token] = verified
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

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
