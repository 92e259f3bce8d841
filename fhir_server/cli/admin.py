"""Admin sub-commands that work on the data dir of a (possibly running) server."""

from __future__ import annotations

from typing import Any

from fhir_server.access.scopes import ScopeSet
from fhir_server.app import ServerIdentity
from fhir_server.cli.command_audit import opened
from fhir_server.errors import InvalidRequest
from fhir_server.settings import Settings
from smart.keys import KeyRing
from smart.tokens import mint_access_token


async def audited_token(settings: Settings, scope: str, **options: Any) -> str:
    """``mint_token``, recorded in the audit trail before the token is handed out."""
    token = mint_token(settings, scope, **options)
    patient = options.get("patient")
    what = f"access token issued: scope {scope!r}, subject {options.get('subject')!r}"
    async with opened(settings) as (_, audit):
        await audit.record(
            "token",
            200,
            what,
            resource_type="Patient" if patient else None,
            resource_id=patient,
        )
    return token


def mint_token(
    settings: Settings,
    scope: str,
    *,
    patient: str | None = None,
    ttl: int = 3600,
    subject: str = "radhub-admin",
    fhir_user: str | None = None,
) -> str:
    """An access token the server on ``settings.data_dir`` accepts. A scope the
    server would ignore, or a ``patient/`` scope without a patient, is refused
    here (``InvalidRequest``): such a token would be turned away at every request."""
    _check_scope(scope, patient)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = ServerIdentity.load(settings.data_dir, settings)
    if settings.base_url:
        identity = ServerIdentity.of(settings)
    keyring = KeyRing.open(settings.data_dir)
    return mint_access_token(
        keyring,
        issuer=identity.issuer,
        audience=identity.audience,
        scope=scope,
        subject=subject,
        client_id="radhub-cli",
        patient=patient,
        fhir_user=fhir_user,
        ttl=ttl,
    )


def _check_scope(scope: str, patient: str | None) -> None:
    granted = ScopeSet.parse(scope)
    if granted.rejected:
        bad = granted.rejected[0]
        raise InvalidRequest(f"scope {bad.scope!r} is not understood: {bad.reason}")
    if patient is None and any(s.level == "patient" for s in granted.resources):
        raise InvalidRequest("patient/ scopes need --patient ID (the patient they are about)")
