"""SMART flows over real HTTP against a running ``radhub serve``: the code flow
with PKCE from the login form to a FHIR read, refresh with rotation, backend
services with a generated key pair, introspection and revocation. Clients and
users are made with the CLI, as an operator would."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from smart.clients import JWT_BEARER
from tests.smart_pages import pkce_pair

from .conftest import ServerProcess
from .test_smart_launch import drive_login

REDIRECT = "http://localhost:9/callback"
PASSWORD = "pw-for-rita-0123"
SECRET = "s3cret-for-the-app-0123"
RS_SECRET = "resource-server-secret-0123"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def code_flow(base: str, scope: str) -> dict[str, Any]:
    """Authorise in the server's own login and consent pages; the token response."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(12)
    params = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "aud": f"{base}/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    callback = drive_login(f"{base}/auth/authorize?{urlencode(params)}", "rita", PASSWORD)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    assert answer["state"] == state and "code" in answer, answer
    data = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    response = httpx.post(f"{base}/auth/token", data=data, headers=basic("app", SECRET))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def refresh(base: str, refresh_token: str, scope: str) -> httpx.Response:
    """The app trades its refresh token for ``scope``."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "scope": scope}
    return httpx.post(f"{base}/auth/token", data=data, headers=basic("app", SECRET))


def introspect(base: str, token: str) -> dict[str, Any]:
    """What the resource server ``rs`` learns of ``token``."""
    seen: dict[str, Any] = httpx.post(
        f"{base}/auth/introspect", data={"token": token}, headers=basic("rs", RS_SECRET)
    ).json()
    return seen


@pytest.mark.slow
def test_code_flow_refresh_introspection_revocation_and_backend_services(
    tmp_path: Path,
    radhub_server: Callable[..., ServerProcess],
    radhub_cli: Callable[..., str],
) -> None:
    data = tmp_path / "data"
    server = radhub_server(data)
    base = server.base
    d = ["--data-dir", str(data)]
    radhub_cli(
        "client", "add", *d, "--client-id", "app", "--secret", SECRET,
        "--redirect-uri", REDIRECT,
    )  # fmt: skip
    radhub_cli("client", "add", *d, "--client-id", "rs", "--secret", RS_SECRET)
    radhub_cli(
        "user", "add", *d, "--username", "rita", "--password", PASSWORD,
        "--role", "radiologist", "--fhir-user", "Practitioner/r1",
    )  # fmt: skip
    key = ECKey.generate_key("P-384", parameters={"kid": "bulk-1", "alg": "ES384"})
    jwks = tmp_path / "bulk.jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    radhub_cli(
        "client", "add", *d, "--client-id", "bulk", "--jwks", str(jwks),
        "--scope", "system/*.rs",
    )  # fmt: skip
    admin = radhub_cli("token", *d, "--scope", "system/*.cruds")
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}]}
    put = httpx.put(
        f"{base}/fhir/Patient/p1", json=patient, headers={"Authorization": f"Bearer {admin}"}
    )
    assert put.status_code in (200, 201), put.text

    # the code flow, from the login form to a FHIR read
    first = code_flow(base, "user/Patient.rs user/Observation.rs offline_access")
    assert first["token_type"] == "Bearer" and "refresh_token" in first
    auth = {"Authorization": f"Bearer {first['access_token']}"}
    assert httpx.get(f"{base}/fhir/Patient/p1", headers=auth).json()["id"] == "p1"

    # refresh: rotated, never wider; the used refresh token is dead
    refreshed = refresh(base, first["refresh_token"], "user/Patient.rs")
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["scope"] == "user/Patient.rs"
    assert second["refresh_token"] != first["refresh_token"]
    wider = refresh(base, second["refresh_token"], "user/*.cruds")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"

    # introspection by a resource server, then revocation by the app
    current = {"Authorization": f"Bearer {second['access_token']}"}
    seen = introspect(base, second["access_token"])
    assert seen["active"] is True and seen["scope"] == "user/Patient.rs"
    assert seen["client_id"] == "app"
    assert httpx.get(f"{base}/fhir/Patient/p1", headers=current).status_code == 200
    revoked = httpx.post(
        f"{base}/auth/revoke", data={"token": second["access_token"]}, headers=basic("app", SECRET)
    )
    assert revoked.status_code == 200
    after = introspect(base, second["access_token"])
    assert after == {"active": False}
    assert httpx.get(f"{base}/fhir/Patient/p1", headers=current).status_code == 401

    # backend services: client_credentials with an ES384 private_key_jwt assertion
    now = int(time.time())
    claims = {
        "iss": "bulk", "sub": "bulk", "aud": f"{base}/auth/token",
        "exp": now + 240, "iat": now, "jti": str(uuid.uuid4()),
    }  # fmt: skip
    header = {"alg": "ES384", "kid": "bulk-1", "typ": "JWT"}
    signed = jwt.encode(header, claims, key, algorithms=["ES384"])
    ask = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": signed,
    }
    backend = httpx.post(f"{base}/auth/token", data=ask)
    assert backend.status_code == 200, backend.text
    system = {"Authorization": f"Bearer {backend.json()['access_token']}"}
    found = httpx.get(f"{base}/fhir/Patient", params={"_id": "p1"}, headers=system)
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["p1"]
    replay = httpx.post(f"{base}/auth/token", data=ask)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"

    # nothing secret in what the server printed
    server.stop()
    printed = "".join(server.output)
    assert "FHIR/HTTP listening" in printed
    for secret in (
        first["access_token"], first["refresh_token"], second["access_token"],
        second["refresh_token"], SECRET, RS_SECRET, PASSWORD, signed,
    ):  # fmt: skip
        assert secret not in printed
