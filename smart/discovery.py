"""SMART discovery: ``/fhir/.well-known/smart-configuration``, the OpenID Provider
metadata at the issuer (``/auth/.well-known/openid-configuration``) and the OAuth
URIs the CapabilityStatement's security extension carries.

Only capabilities the server really has are listed.
See https://build.fhir.org/ig/HL7/smart-app-launch/conformance.html
"""

from __future__ import annotations

from typing import Any

from smart.clients import ASSERTION_ALGORITHMS, AUTH_METHODS
from smart.config import AuthConfig
from smart.grants import GRANT_TYPES

CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "context-style",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
    "authorize-post",
)

SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
    "patient/*.write",
    "user/*.write",
    "system/*.write",
)


def _oauth_metadata(config: AuthConfig) -> dict[str, Any]:
    """What both discovery documents say alike (RFC 8414 names)."""
    return {
        "issuer": config.issuer,
        "jwks_uri": config.jwks_url,
        "authorization_endpoint": config.authorize_url,
        "token_endpoint": config.token_url,
        "introspection_endpoint": config.introspect_url,
        "revocation_endpoint": config.revoke_url,
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }


def smart_configuration(config: AuthConfig) -> dict[str, Any]:
    """The discovery document (SMART App Launch 2.x §Conformance)."""
    return {**_oauth_metadata(config), "capabilities": list(CAPABILITIES)}


# What an id_token says (``smart.issuer.TokenIssuer.id_token``).
ID_TOKEN_CLAIMS = ("iss", "sub", "aud", "iat", "exp", "auth_time", "nonce", "fhirUser")


def openid_configuration(config: AuthConfig, signing_alg: str) -> dict[str, Any]:
    """The OpenID Provider metadata (OpenID Connect Discovery 1.0 §3), served at
    ``{issuer}/.well-known/openid-configuration``: an app that asked for ``openid``
    finds there the keys to check the ``id_token`` against (SMART App Launch 2.x,
    "Scopes for requesting identity data"), and OIDC client libraries find the
    endpoints. ``signing_alg`` is the algorithm the server's keys sign with."""
    return {
        **_oauth_metadata(config),
        "end_session_endpoint": config.logout_url,
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [signing_alg],
        "claims_supported": list(ID_TOKEN_CLAIMS),
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }


def oauth_uris(config: AuthConfig) -> dict[str, str]:
    """The endpoints for the CapabilityStatement's ``oauth-uris`` extension."""
    return {
        "authorize": config.authorize_url,
        "token": config.token_url,
        "introspect": config.introspect_url,
        "revoke": config.revoke_url,
        "jwks": config.jwks_url,
    }
