"""The token endpoint's grant types (RFC 6749 §4.1.3, §4.4, §6) for SMART.

- ``authorization_code``: PKCE S256 required, exact ``redirect_uri``, the code
  single-use and short-lived; a replayed code revokes everything its first
  redemption issued (RFC 6749 §4.1.2, RFC 9700 §4.2.4).
- ``refresh_token``: rotated on every use; reusing a rotated token revokes the
  whole family; a narrower ``scope`` may be asked, never a wider one (§6);
  refused, and the family revoked, once the user is disabled or deleted or
  their roles or fhirUser changed (the grant was capped by the old ones).
- ``client_credentials``: SMART Backend Services, ``system/`` scopes only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fhir_server.storage.auth_port import AuthData, ClientRecord, GrantInfo
from smart.errors import InvalidGrant, InvalidScope, UnauthorizedClient, UnsupportedGrantType
from smart.issuer import TokenIssuer
from smart.scopes import cap_to_client, only_system, split, within
from smart.secrets import digest, pkce_matches

GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")


class TokenGrants:
    """Turns an authenticated client's token request into a token response."""

    def __init__(
        self,
        auth: AuthData,
        issuer: TokenIssuer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._issuer = issuer
        self._clock = clock

    async def exchange(self, client: ClientRecord, form: Mapping[str, str]) -> dict[str, Any]:
        """Dispatch on ``grant_type``; raises an OAuthError subclass when refused."""
        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            return await self.authorization_code(client, form)
        if grant_type == "refresh_token":
            return await self.refresh_token(client, form)
        if grant_type == "client_credentials":
            return await self.client_credentials(client, form)
        raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")

    async def authorization_code(
        self, client: ClientRecord, form: Mapping[str, str]
    ) -> dict[str, Any]:
        taken = await self._auth.take_code(digest(form.get("code", "")))
        if taken is None or taken.code is None:
            raise InvalidGrant("unknown authorization code")
        code = taken.code
        if not taken.first_use:
            await self._auth.revoke_grant(code.grant.grant_id)
            raise InvalidGrant("authorization code already used; its tokens are revoked")
        if code.grant.client_id != client.client_id:
            raise InvalidGrant("the code was issued to another client")
        if code.expires_at < self._clock():
            raise InvalidGrant("authorization code expired")
        if form.get("redirect_uri") != code.redirect_uri:
            raise InvalidGrant("redirect_uri does not match the authorization request")
        if not pkce_matches(form.get("code_verifier", ""), code.code_challenge):
            raise InvalidGrant("PKCE code_verifier missing or wrong")
        return await self._issuer.respond(code.grant, code.grant.scope, nonce=code.nonce)

    async def refresh_token(self, client: ClientRecord, form: Mapping[str, str]) -> dict[str, Any]:
        key = digest(form.get("refresh_token", ""))
        known = await self._auth.get_refresh(key)
        if known is None or known.grant.client_id != client.client_id:
            raise InvalidGrant("unknown refresh token")  # and left unused for its owner
        taken = await self._auth.take_refresh(key)
        token = taken.refresh if taken is not None else None
        if taken is None or token is None:
            raise InvalidGrant("unknown refresh token")
        if token.revoked:
            raise InvalidGrant("refresh token revoked")
        if not taken.first_use:
            await self._auth.revoke_grant(token.grant.grant_id)
            raise InvalidGrant("refresh token already used; the grant is revoked")
        if token.expires_at < self._clock():
            raise InvalidGrant("refresh token expired")
        if not await self._user_unchanged(token.grant):
            await self._auth.revoke_grant(token.grant.grant_id)
            raise InvalidGrant("the user's account was disabled or changed; sign in again")
        granted = split(token.grant.scope)
        asked = split(form["scope"]) if form.get("scope") else granted
        if not all(within(item, granted) for item in asked):
            raise InvalidScope("a refresh may not widen the original grant")
        return await self._issuer.respond(token.grant, " ".join(asked))

    async def _user_unchanged(self, grant: GrantInfo) -> bool:
        """Whether the user behind a refresh grant still exists, is active, and holds
        the roles and fhirUser the grant was capped by (the admin API may change them)."""
        user = await self._auth.get_user(grant.subject)
        return (
            user is not None
            and user.is_active
            and set(user.roles) == set(grant.roles)
            and user.fhir_user == grant.fhir_user
        )

    async def client_credentials(
        self, client: ClientRecord, form: Mapping[str, str]
    ) -> dict[str, Any]:
        if client.kind == "public":
            raise UnauthorizedClient("a public client cannot use client_credentials")
        asked = split(form.get("scope"))
        if not asked or only_system(asked) != asked:
            raise InvalidScope("client_credentials grants system/ scopes only")
        granted = cap_to_client(asked, client.scope)
        if not granted:
            raise InvalidScope("none of the requested scopes is allowed for this client")
        grant = GrantInfo(
            grant_id=str(uuid.uuid4()),
            client_id=client.client_id,
            subject=client.client_id,
            scope=" ".join(granted),
            auth_time=self._clock(),
        )
        return await self._issuer.respond(grant, grant.scope, with_refresh=False)
