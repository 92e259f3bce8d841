"""Token introspection (RFC 7662) and revocation (RFC 7009).

Access tokens are JWTs: introspection verifies them exactly as the FHIR API
does (signature, issuer, audience, expiry, revocation). Refresh tokens are
looked up by digest. Revoking a refresh token revokes its whole family
(every refresh and access token of the grant); revoking an access token
revokes that token. Clients may only revoke their own tokens; unknown
tokens are answered with 200, as RFC 7009 §2.2 asks.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from fhir_server.access import AuthContext, TokenVerifier
from fhir_server.errors import Unauthorized
from fhir_server.storage.auth_port import AuthData, ClientRecord, RefreshToken
from smart.config import AuthConfig
from smart.secrets import digest


class Introspection:
    """``/auth/introspect`` and ``/auth/revoke``."""

    def __init__(
        self,
        config: AuthConfig,
        auth: AuthData,
        verifier: TokenVerifier,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._auth = auth
        self._verifier = verifier
        self._clock = clock

    async def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 §2.2 answer for ``token``."""
        ctx = await self._access(token)
        if ctx is not None:
            return self._access_answer(ctx, _claims(token))
        refresh = await self._refresh(token)
        if refresh is not None:
            return self._refresh_answer(refresh)
        return {"active": False}

    async def revoke(self, client: ClientRecord, token: str) -> None:
        """Revoke ``token`` if it is this client's (RFC 7009 §2.1)."""
        refresh = await self._auth.get_refresh(digest(token))
        if refresh is not None:
            if refresh.grant.client_id == client.client_id:
                await self._auth.revoke_grant(refresh.grant.grant_id)
            return
        ctx = await self._access(token)
        if ctx is not None and ctx.client_id == client.client_id and ctx.token_id:
            expires = float(_claims(token).get("exp", self._clock() + 3600))
            await self._auth.revoke_jti(ctx.token_id, expires)

    async def _access(self, token: str) -> AuthContext | None:
        if token.count(".") != 2:
            return None
        try:
            return await self._verifier.verify(token)
        except Unauthorized:
            return None

    async def _refresh(self, token: str) -> RefreshToken | None:
        found = await self._auth.get_refresh(digest(token))
        if found is None or found.used or found.revoked or found.expires_at < self._clock():
            return None
        return found

    def _access_answer(self, ctx: AuthContext, claims: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "scope": str(ctx.scopes),
            "client_id": ctx.client_id,
            "sub": ctx.subject,
            "iss": self._config.issuer,
            "aud": self._config.audience,
        }
        answer |= {k: claims[k] for k in ("exp", "iat", "nbf", "jti") if k in claims}
        optional = {"patient": ctx.patient, "encounter": ctx.encounter, "fhirUser": ctx.fhir_user}
        answer |= {k: v for k, v in optional.items() if v is not None}
        if ctx.roles:
            answer["roles"] = sorted(ctx.roles)
        return {k: v for k, v in answer.items() if v is not None}

    def _refresh_answer(self, refresh: RefreshToken) -> dict[str, Any]:
        grant = refresh.grant
        answer: dict[str, Any] = {
            "active": True,
            "token_type": "refresh_token",
            "scope": grant.scope,
            "client_id": grant.client_id,
            "sub": grant.subject,
            "exp": int(refresh.expires_at),
            "iss": self._config.issuer,
        }
        if grant.patient:
            answer["patient"] = grant.patient
        return answer


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT already verified (no second signature check)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims
