"""OAuth 2 errors (RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 6750 §3.1) and their rendering.

    OAuthError (400, invalid_request)
    ├── InvalidClient (401, invalid_client)
    ├── InvalidGrant (400, invalid_grant)
    ├── UnauthorizedClient (400, unauthorized_client)
    ├── UnsupportedGrantType (400, unsupported_grant_type)
    ├── InvalidScope (400, invalid_scope)
    ├── AccessDenied (403, access_denied)
    ├── UnsupportedResponseType (400, unsupported_response_type)
    └── LoginRequired (401, login_required: OpenID Connect Core §3.1.2.6)

Token endpoint errors are JSON with ``Cache-Control: no-store``; authorize
errors are redirected to the client (``error``, ``error_description``,
``state``) once its redirect URI is known to be registered.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.responses import JSONResponse

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An error the OAuth client should see, with its RFC error code."""

    error: ClassVar[str] = "invalid_request"
    status: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def response(self) -> JSONResponse:
        """The token-endpoint error response (RFC 6749 §5.2)."""
        body = {"error": self.error, "error_description": self.description}
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="radhub"'
        return JSONResponse(body, status_code=self.status, headers=headers)


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class LoginRequired(OAuthError):
    """``prompt=none`` asked for no page, and the user is not signed in."""

    error = "login_required"
    status = 401


class ConsentRequired(OAuthError):
    """``prompt=none`` asked for no page, and the user has not consented to this yet."""

    error = "consent_required"
    status = 403
