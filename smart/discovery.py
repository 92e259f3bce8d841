"""SMART discovery: ``/fhir/.well-known/smart-configuration`` and the OAuth URIs
the CapabilityStatement's security extension carries.

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


def smart_configuration(config: AuthConfig) -> dict[str, Any]:
    """The discovery document (SMART App Launch 2.x §Conformance)."""
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
        "capabilities": list(CAPABILITIES),
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
