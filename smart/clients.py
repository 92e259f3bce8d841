"""Client authentication at the token, introspection and revocation endpoints.

Each registered client has one way in, fixed by its kind:

- ``public``: ``client_id`` only (PKCE protects its codes);
- ``symmetric``: ``client_secret_basic`` (RFC 6749 §2.3.1) or ``client_secret_post``;
- ``asymmetric``: ``private_key_jwt`` (RFC 7523 §2.2), an assertion signed with
  RS384 or ES384 by a key of the client's registered JWKS or ``jwks_uri``,
  whose ``jti`` is accepted once. See SMART Backend Services,
  https://build.fhir.org/ig/HL7/smart-app-launch/client-confidential-asymmetric.html
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from fastapi_users.password import PasswordHelper
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from fhir_server.storage.auth_port import AuthData, ClientRecord
from smart.errors import InvalidClient
from smart.jwks_fetch import JwksSource, JwksUnavailable
from smart.secrets import verify_secret

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")


class ClientAuthenticator:
    """Finds and authenticates the client behind a token-endpoint request."""

    def __init__(
        self,
        auth: AuthData,
        helper: PasswordHelper,
        token_url: str,
        *,
        fetch_jwks: JwksSource | None = None,
        max_assertion_ttl: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._helper = helper
        self._token_url = token_url
        self._fetch_jwks = fetch_jwks
        self._max_ttl = max_assertion_ttl
        self._clock = clock

    async def authenticate(
        self, form: Mapping[str, str], authorization: str | None
    ) -> ClientRecord:
        """The authenticated client, or InvalidClient."""
        if authorization and authorization.lower().startswith("basic "):
            client_id, secret = _basic(authorization)
            return await self._by_secret(client_id, secret)
        if "client_assertion_type" in form or "client_assertion" in form:
            return await self._by_assertion(form)
        client_id = form.get("client_id", "")
        if "client_secret" in form:
            return await self._by_secret(client_id, form["client_secret"])
        client = await self._auth.get_client(client_id) if client_id else None
        if client is None or client.kind != "public":
            raise InvalidClient("client authentication failed")
        return client

    async def _by_secret(self, client_id: str, secret: str) -> ClientRecord:
        client = await self._auth.get_client(client_id) if client_id else None
        if client is None or client.kind != "symmetric" or not client.secret_hash:
            raise InvalidClient("client authentication failed")
        if not await verify_secret(self._helper, secret, client.secret_hash):
            raise InvalidClient("client authentication failed")
        return client

    async def _by_assertion(self, form: Mapping[str, str]) -> ClientRecord:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise InvalidClient("unsupported client_assertion_type")
        assertion = form.get("client_assertion", "")
        header, unverified = _unverified(assertion)
        issuer = unverified.get("iss")
        client_id = issuer if isinstance(issuer, str) else ""
        client = await self._auth.get_client(client_id) if client_id else None
        if client is None or client.kind != "asymmetric":
            raise InvalidClient("client authentication failed")
        if form.get("client_id") not in (None, client.client_id):
            raise InvalidClient("client_id does not match the assertion")
        kid = header.get("kid")
        keys = await self._keys(client, kid if isinstance(kid, str) else None)
        claims = self._verify(assertion, client, keys)
        key = f"{client.client_id}:{claims['jti']}"
        if not await self._auth.use_jti(key, float(claims["exp"])):
            raise InvalidClient("client assertion replayed (jti already used)")
        return client

    async def _keys(self, client: ClientRecord, kid: str | None) -> KeySet:
        try:
            if client.jwks:
                return KeySet.import_key_set(json.loads(client.jwks))
            if client.jwks_uri and self._fetch_jwks is not None:
                fetched: Any = await self._fetch_jwks(client.jwks_uri, kid=kid)
                return KeySet.import_key_set(fetched)
        except JwksUnavailable as exc:
            raise InvalidClient(f"the client's keys are unusable: {exc}") from exc
        except (ValueError, JoseError, OSError) as exc:
            raise InvalidClient("the client's keys are unusable") from exc
        raise InvalidClient("the client has no registered keys")

    def _verify(self, assertion: str, client: ClientRecord, keys: KeySet) -> dict[str, Any]:
        now = int(self._clock())
        registry = JWTClaimsRegistry(
            now=lambda: now,
            leeway=30,
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "value": self._token_url},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            token = jwt.decode(assertion, keys, algorithms=list(ASSERTION_ALGORITHMS))
            registry.validate(token.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidClient(f"invalid client assertion: {type(exc).__name__}") from exc
        claims = dict(token.claims)
        if int(claims["exp"]) > now + self._max_ttl + 30:
            raise InvalidClient("client assertion lives too long (exp over 5 minutes)")
        return claims


def _basic(authorization: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(authorization.split(" ", 1)[1].strip(), validate=True).decode()
    except (ValueError, IndexError) as exc:  # binascii.Error, UnicodeDecodeError; non-ASCII
        raise InvalidClient("malformed Basic credentials") from exc
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    return unquote(client_id), unquote(secret)  # RFC 6749 §2.3.1: form-urlencoded


def _unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT before its signature is checked (to find the
    client and the key it names)."""
    try:
        parts = [
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            for part in assertion.split(".")[:2]
        ]
        header, claims = parts
    except (ValueError, RecursionError) as exc:  # binascii.Error is a ValueError
        raise InvalidClient("malformed client assertion") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidClient("malformed client assertion")
    return header, claims
