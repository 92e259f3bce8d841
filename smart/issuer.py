"""Issuing tokens for a grant: the access token, the rotated refresh token, the
OpenID Connect ``id_token``, and the SMART token response around them.

See https://build.fhir.org/ig/HL7/smart-app-launch/app-launch.html#response-5
and https://openid.net/specs/openid-connect-core-1_0.html#IDToken
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt

from fhir_server.storage.auth_port import AuthData, GrantInfo, RefreshToken
from smart.config import AuthConfig
from smart.keys import KeyRing
from smart.scopes import split
from smart.secrets import digest, new_token
from smart.tokens import mint_access_token

REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


class TokenIssuer:
    """Mints what the token endpoint hands out and records it for revocation."""

    def __init__(
        self,
        config: AuthConfig,
        keyring: KeyRing,
        auth: AuthData,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._keyring = keyring
        self._auth = auth
        self._clock = clock

    async def respond(
        self,
        grant: GrantInfo,
        scope: str,
        *,
        nonce: str | None = None,
        with_refresh: bool = True,
    ) -> dict[str, Any]:
        """The token response for ``grant``, granting ``scope`` (a subset of the grant's)."""
        now = self._clock()
        jti = secrets.token_urlsafe(16)
        expires = now + self._config.access_ttl
        access = self._access_token(grant, scope, now, jti)
        await self._auth.record_issued(jti, grant.grant_id, expires)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self._config.access_ttl,
            "scope": scope,
        }
        body |= self._context(grant)
        items = set(split(scope))
        # the family's grant, not this narrower token, decides whether it may refresh
        if with_refresh and set(split(grant.scope)) & REFRESH_SCOPES:
            body["refresh_token"] = await self._refresh_token(grant, now)
        if "openid" in items:  # OpenID Connect Core §3.1.3.3: then id_token MUST be there
            # the fhirUser claim is what fhirUser (or SMART v1's profile) asks for
            identity = bool(items & {"fhirUser", "profile"})
            body["id_token"] = self.id_token(grant, now, nonce, with_fhir_user=identity)
        return body

    def _access_token(self, grant: GrantInfo, scope: str, now: float, jti: str) -> str:
        return mint_access_token(
            self._keyring,
            issuer=self._config.issuer,
            audience=self._config.audience,
            scope=scope,
            subject=grant.subject,
            client_id=grant.client_id,
            patient=grant.patient,
            encounter=grant.encounter,
            fhir_user=grant.fhir_user,
            roles=grant.roles,
            ttl=self._config.access_ttl,
            now=now,
            jti=jti,
        )

    def _context(self, grant: GrantInfo) -> dict[str, Any]:
        context: dict[str, Any] = {}
        if grant.patient:
            context["patient"] = grant.patient
            # an EHR launch shows the app inside a chart that has its own banner
            context["need_patient_banner"] = not grant.launched
        if grant.encounter:
            context["encounter"] = grant.encounter
        if self._config.smart_style_url:
            context["smart_style_url"] = self._config.smart_style_url
        return context

    async def _refresh_token(self, grant: GrantInfo, now: float) -> str:
        value = new_token()
        expires = now + self._config.refresh_ttl
        await self._auth.put_refresh(RefreshToken(digest(value), grant, expires))
        return value

    def id_token(
        self, grant: GrantInfo, now: float, nonce: str | None, *, with_fhir_user: bool = True
    ) -> str:
        """An OpenID Connect ID token; ``fhirUser`` is an absolute URL (SMART §fhirUser).

        See https://openid.net/specs/openid-connect-core-1_0.html#IDToken
        """
        claims: dict[str, Any] = {
            "iss": self._config.issuer,
            "sub": grant.subject,
            "aud": grant.client_id,
            "iat": int(now),
            "exp": int(now) + self._config.access_ttl,
            "auth_time": int(grant.auth_time or now),
        }
        if nonce:
            claims["nonce"] = nonce
        if with_fhir_user and grant.fhir_user:
            claims["fhirUser"] = f"{self._config.audience}/{grant.fhir_user}"
        key = self._keyring.active_key
        header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key.jwk, algorithms=[key.alg])
