"""The admin API's documents: request bodies checked and turned into store records,
and records shown without their secrets (pure functions; no I/O, no clock).

Client metadata follows RFC 7591 §2 (``client_id``, ``client_name``,
``token_endpoint_auth_method``, ``redirect_uris``, ``scope``, ``jwks``,
``jwks_uri``; and RP-Initiated Logout §3.1's ``post_logout_redirect_uris``, held
to the same rules as redirect URIs); errors are RFC 7591 §3.2.2's ``invalid_redirect_uri`` and
``invalid_client_metadata``. Redirect URIs are absolute ``https`` URLs, or
``http`` on a loopback host for native and development apps (RFC 8252 §7.3),
without a fragment (RFC 6749 §3.1.2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_server.access import ScopeSet
from fhir_server.access.roles import ROLES
from fhir_server.storage.auth_port import ClientKind, ClientRecord, SignInSession, UserRecord
from smart.errors import OAuthError
from smart.jwks_fetch import (
    LOOPBACK_HOSTS,
    JwksUnavailable,
    check_jwks_uri,
    parse_public_jwks,
    split_url,
)
from smart.users import USERNAME_RULE, is_username

# token_endpoint_auth_method → the kind of client the store keeps
AUTH_METHOD_KIND: Mapping[str, ClientKind] = {
    "none": "public",
    "client_secret_basic": "symmetric",
    "client_secret_post": "symmetric",
    "private_key_jwt": "asymmetric",
}
KIND_AUTH_METHOD: Mapping[ClientKind, str] = {
    "public": "none",
    "symmetric": "client_secret_basic",
    "asymmetric": "private_key_jwt",
}
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:-]{0,127}")
FHIR_USER = re.compile(r"(Practitioner|Patient)/[A-Za-z0-9\-.]{1,64}")
MIN_PASSWORD = 8


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"


class NotFound(OAuthError):
    error = "not_found"
    status = 404


class AlreadyExists(OAuthError):
    error = "already_exists"
    status = 409


# -- clients -------------------------------------------------------------------------


def client_from_metadata(
    body: Any, client_id: str, *, secret_hash: str | None = None
) -> ClientRecord:
    """The client record ``body`` (RFC 7591 metadata) describes; raises on bad metadata."""
    if not isinstance(body, dict):
        raise InvalidClientMetadata("the body must be a JSON object")
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise InvalidClientMetadata("client_id: 1-128 of A-Z a-z 0-9 . _ ~ : -")
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    kind = AUTH_METHOD_KIND.get(method) if isinstance(method, str) else None
    if kind is None:
        raise InvalidClientMetadata(f"token_endpoint_auth_method: one of {list(AUTH_METHOD_KIND)}")
    redirects = tuple(_redirect_uri(u) for u in _strings(body, "redirect_uris"))
    if kind == "public" and not redirects:
        raise InvalidRedirectUri("a public client needs at least one redirect_uri")
    jwks, jwks_uri = _keys(body, kind)
    logouts = tuple(_redirect_uri(u) for u in _strings(body, "post_logout_redirect_uris"))
    return ClientRecord(
        client_id,
        kind,
        redirect_uris=redirects,
        post_logout_redirect_uris=logouts,
        scope=_scope(body.get("scope", "")),
        secret_hash=secret_hash if kind == "symmetric" else None,
        jwks=jwks,
        jwks_uri=jwks_uri,
        name=_text(body, "client_name", 200),
    )


def client_view(client: ClientRecord) -> dict[str, Any]:
    """A client's registration as the API shows it: never its secret (hash)."""
    view: dict[str, Any] = {
        "client_id": client.client_id,
        "client_name": client.name,
        "token_endpoint_auth_method": KIND_AUTH_METHOD[client.kind],
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
    }
    if client.post_logout_redirect_uris:
        view["post_logout_redirect_uris"] = list(client.post_logout_redirect_uris)
    if client.jwks:
        view["jwks"] = json.loads(client.jwks)
    if client.jwks_uri:
        view["jwks_uri"] = client.jwks_uri
    return view


def _redirect_uri(uri: str) -> str:
    try:
        parts = split_url(uri)
    except ValueError as exc:
        raise InvalidRedirectUri(f"{uri!r}: not a URL ({exc})") from None
    secure = parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    )
    if not secure or not parts.hostname or parts.fragment:
        raise InvalidRedirectUri(
            f"{uri!r}: redirect URIs are absolute https URLs (http only on a loopback host) "
            "without a fragment"
        )
    return uri


def _keys(body: Mapping[str, Any], kind: ClientKind) -> tuple[str | None, str | None]:
    jwks, jwks_uri = body.get("jwks"), body.get("jwks_uri")
    if kind != "asymmetric":
        if jwks is not None or jwks_uri is not None:
            raise InvalidClientMetadata("jwks and jwks_uri are for private_key_jwt clients only")
        return None, None
    if (jwks is None) == (jwks_uri is None):
        raise InvalidClientMetadata("a private_key_jwt client needs jwks or jwks_uri (one)")
    if jwks_uri is not None:
        reason = check_jwks_uri(jwks_uri) if isinstance(jwks_uri, str) else "not a string"
        if reason:
            raise InvalidClientMetadata(f"jwks_uri: {reason}")
        return None, jwks_uri
    try:
        public = parse_public_jwks(json.dumps(jwks).encode())
        KeySet.import_key_set(public)  # type: ignore[arg-type]
    except (JwksUnavailable, JoseError, ValueError, TypeError) as exc:
        raise InvalidClientMetadata(f"jwks: {exc}") from exc
    return json.dumps(public), None


# A client's scopes fit in a few hundred characters; a refused one is quoted in the
# answer and the audit trail, so neither may be made to carry megabytes.
MAX_SCOPE_LENGTH = 16 * 1024
_QUOTED_MOST = 100


def _scope(scope: Any) -> str:
    if not isinstance(scope, str):
        raise InvalidClientMetadata("scope must be a space-separated string")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidClientMetadata(f"scope: at most {MAX_SCOPE_LENGTH} characters")
    rejected = ScopeSet.parse(scope).rejected
    if rejected:
        quoted = rejected[0].scope[:_QUOTED_MOST] + (
            "..." if len(rejected[0].scope) > _QUOTED_MOST else ""
        )
        raise InvalidClientMetadata(f"scope {quoted!r}: {rejected[0].reason}")
    return " ".join(scope.split())


# -- users ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewUser:
    """A checked user creation request (the password is hashed by the caller)."""

    username: str
    password: str
    roles: tuple[str, ...]
    fhir_user: str | None


def new_user(body: Any) -> NewUser:
    """The user ``body`` asks for; raises OAuthError (invalid_request) on bad input."""
    if not isinstance(body, dict):
        raise OAuthError("the body must be a JSON object")
    username = _text(body, "username", 128, OAuthError)
    if not is_username(username):
        raise OAuthError(f"username: {USERNAME_RULE}")
    roles = tuple(sorted(set(_strings(body, "roles", OAuthError))))
    fhir_user = _fhir_user(body.get("fhirUser"))
    check_roles(roles, fhir_user)
    return NewUser(username, password_of(body), roles, fhir_user)


def user_changes(body: Any, user: UserRecord) -> tuple[dict[str, Any], str | None]:
    """The field changes a PATCH body asks for, and a new password if one is set."""
    if not isinstance(body, dict):
        raise OAuthError("the body must be a JSON object")
    changes: dict[str, Any] = {}
    if "roles" in body:
        changes["roles"] = tuple(sorted(set(_strings(body, "roles", OAuthError))))
        changes["is_superuser"] = "admin" in changes["roles"]
    if "fhirUser" in body:
        changes["fhir_user"] = _fhir_user(body["fhirUser"])
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise OAuthError("active must be true or false")
        changes["is_active"] = body["active"]
    if body.get("unlock") is True:
        changes |= {"failed_logins": 0, "locked_until": 0.0}
    check_roles(changes.get("roles", user.roles), changes.get("fhir_user", user.fhir_user))
    return changes, password_of(body) if "password" in body else None


def check_roles(roles: tuple[str, ...], fhir_user: str | None) -> None:
    """Known roles; a patient user is only a patient, linked to their Patient record."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise OAuthError(f"roles: one or more of {sorted(ROLES)}; unknown: {unknown}")
    if "patient" in roles and (len(roles) > 1 or not (fhir_user or "").startswith("Patient/")):
        raise OAuthError("a patient user holds only the patient role and a Patient fhirUser")
    if fhir_user and fhir_user.startswith("Patient/") and "patient" not in roles:
        raise OAuthError("a Patient fhirUser is for patient users only")


def user_view(user: UserRecord, now: float) -> dict[str, Any]:
    """A user as the API shows it: never the password hash."""
    return {
        "id": user.id,
        "username": user.email,
        "roles": list(user.roles),
        "fhirUser": user.fhir_user,
        "active": user.is_active,
        "locked": user.locked_until > now,
    }


def session_view(session: SignInSession) -> dict[str, Any]:
    """A sign-in session as the API shows it. Its ``id`` is a prefix of the cookie's
    digest: it names the session and cannot be turned back into the cookie."""
    return {
        "id": session.session_hash[:16],
        "signedInAt": _instant(session.auth_time),
        "idleUntil": _instant(session.expires_at),
        "endsBy": _instant(session.ends_at),
        "apps": sorted({c.client_id for c in session.consents}),
    }


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=UTC).isoformat().replace("+00:00", "Z")


def password_of(body: Mapping[str, Any]) -> str:
    password = body.get("password")
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise OAuthError(f"password: a string of at least {MIN_PASSWORD} characters")
    return password


def _fhir_user(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not FHIR_USER.fullmatch(value):
        raise OAuthError("fhirUser: a Practitioner/ID or Patient/ID reference")
    return value


# -- shared --------------------------------------------------------------------------


def _strings(
    body: Mapping[str, Any], name: str, error: type[OAuthError] = InvalidClientMetadata
) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"{name} must be a list of strings")
    return list(dict.fromkeys(value))


def _text(
    body: Mapping[str, Any], name: str, limit: int, error: type[OAuthError] = InvalidClientMetadata
) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise error(f"{name} must be a string of at most {limit} characters")
    return value
