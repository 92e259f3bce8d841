"""The authorisation server's settings and endpoint URLs, read once and passed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Where the server lives and how long what it issues lasts (seconds).

    ``issuer`` is ``<public base>/auth``; ``audience`` is the FHIR base, the
    only ``aud`` an authorize request may name (SMART App Launch §2.0.5).
    """

    issuer: str
    audience: str
    code_ttl: int = 60
    access_ttl: int = 3600
    refresh_ttl: int = 30 * 24 * 3600
    launch_ttl: int = 3600
    login_ttl: int = 600
    # a sign-in session (smart.sessions): unused, and at most (radhub serve's
    # --session-idle and --session-max)
    session_idle: int = 2 * 3600
    session_max: int = 10 * 3600
    assertion_max_ttl: int = 300
    max_failed_logins: int = 5
    lockout_seconds: int = 900
    smart_style_url: str | None = None

    @property
    def authorize_url(self) -> str:
        return f"{self.issuer}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def introspect_url(self) -> str:
        return f"{self.issuer}/introspect"

    @property
    def revoke_url(self) -> str:
        return f"{self.issuer}/revoke"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def launch_url(self) -> str:
        return f"{self.issuer}/launch"

    @property
    def logout_url(self) -> str:
        return f"{self.issuer}/logout"
