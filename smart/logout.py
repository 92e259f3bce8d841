"""The end-session endpoint of OpenID Connect RP-Initiated Logout 1.0
(``/auth/logout``): where an app sends its user when they sign out.

The server ends the browser's sign-in session (``smart.sessions``; the route does)
and the app revokes its tokens (RFC 7009) or lets them expire. What this module
checks is where the user goes next: back to the app only at an address the app
registered for that (``post_logout_redirect_uris``, §3.1), so the endpoint cannot
be used as an open redirect; without one, a page says they are signed out. The
client is named by ``client_id`` or by the audience of ``id_token_hint``, an
id_token radhub issued (its signature and issuer checked; an expired one is
accepted, §2); both given, they must agree. The session ends without a hint too: on
a shared reading-room workstation, a sign-out that did not end it would be worse
than another site being able to sign the user out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fhir_server.storage.auth_port import AuthData
from smart.config import AuthConfig
from smart.id_token_hint import BadHint, hint_claims
from smart.keys import KeyRing

LOGOUT_PARAMS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state")


class LogoutRefused(ValueError):
    """A request the endpoint must not act on; shown on a page, never redirected."""


@dataclass(frozen=True)
class SignedOut:
    """Where to send the user (None: radhub's own page), and for which client."""

    client_id: str | None
    redirect_uri: str | None
    state: str | None


class Logout:
    """Checks end-session requests (module docstring)."""

    def __init__(self, config: AuthConfig, auth: AuthData, keyring: KeyRing) -> None:
        self._config = config
        self._auth = auth
        self._keyring = keyring  # every key radhub may have signed with, by kid

    async def check(self, raw: Mapping[str, str]) -> SignedOut:
        params = {k: raw[k] for k in LOGOUT_PARAMS if raw.get(k)}
        client_id = params.get("client_id")
        if "id_token_hint" in params:
            audience = self._audience_of(params["id_token_hint"])
            if client_id is not None and client_id not in audience:
                raise LogoutRefused("client_id is not the audience of id_token_hint")
            if client_id is None and len(audience) == 1:
                client_id = audience[0]
        redirect = params.get("post_logout_redirect_uri")
        if redirect is not None:
            client = await self._auth.get_client(client_id) if client_id else None
            if client is None:
                raise LogoutRefused(
                    "post_logout_redirect_uri needs a known client_id or id_token_hint"
                )
            if redirect not in client.post_logout_redirect_uris:
                raise LogoutRefused("post_logout_redirect_uri is not registered for this client")
        return SignedOut(client_id, redirect, params.get("state"))

    def _audience_of(self, hint: str) -> list[str]:
        """The ``aud`` of an id_token radhub signed; its expiry is not checked (§2)."""
        try:
            claims = hint_claims(hint, self._keyring, self._config.issuer)
        except BadHint as exc:
            raise LogoutRefused(str(exc)) from exc
        audience = claims.get("aud")
        values = [audience] if isinstance(audience, str) else audience
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise LogoutRefused("id_token_hint names no client")
        return values
