"""SMART against a real ``radhub serve`` process: clients and users made with the
CLI, an EHR launch minted by ``radhub launch``, completed by the Python
``fhirclient`` package; then ``radhub audit verify`` on the trail it left,
before and after tampering with it."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.smart_pages import parse_form

from .conftest import RADHUB, ServerProcess

REDIRECT = "http://localhost:9/callback"
PASSWORD = "pw-for-rita-0123"


def drive_login(authorize_url: str, user: str, password: str) -> str:
    """Sign in and approve in the server's pages, as a browser would; the callback URL."""
    with httpx.Client(timeout=30) as http:
        page = http.get(authorize_url)
        assert page.status_code == 200, page.text
        login = http.post(
            page.url.copy_with(query=None),
            data={**parse_form(page.text).fields, "username": user, "password": password},
        )
        assert login.status_code == 200, login.text
        consent = parse_form(login.text)
        data: dict[str, Any] = {**consent.fields, "decision": "approve"}
        data["grant"] = consent.checkboxes
        done = http.post(page.url.copy_with(query=None), data=data)
        assert done.status_code == 302, done.text
        return done.headers["location"]


def audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RADHUB, "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_fhirclient_ehr_launch_and_audit_chain(
    tmp_path: Path,
    radhub_server: Callable[..., ServerProcess],
    radhub_cli: Callable[..., str],
) -> None:
    from fhirclient import client
    from fhirclient.models.patient import Patient

    data = tmp_path / "data"
    server = radhub_server(data)
    d = ["--data-dir", str(data)]
    radhub_cli("client", "add", *d, "--client-id", "fc", "--public", "--redirect-uri", REDIRECT)
    radhub_cli(
        "user", "add", *d, "--username", "rita", "--password", PASSWORD,
        "--role", "radiologist", "--fhir-user", "Practitioner/r1",
    )  # fmt: skip
    admin = radhub_cli("token", *d, "--scope", "system/*.cruds")
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}]}
    put = httpx.put(
        f"{server.base}/fhir/Patient/p1",
        json=patient,
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert put.status_code in (200, 201)
    launch = radhub_cli("launch", *d, "--client-id", "fc", "--patient", "p1")

    smart = client.FHIRClient(
        settings={
            "app_id": "fc",
            "api_base": f"{server.base}/fhir",
            "redirect_uri": REDIRECT,
            "scope": "launch patient/*.rs openid fhirUser",
            "launch_token": launch,
        }
    )
    callback = drive_login(smart.authorize_url, "rita", PASSWORD)
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == "p1"
    read = Patient.read("p1", smart.server)
    assert read.name[0].family == "Doe"

    time.sleep(0.5)  # the audit writer flushes in the background
    intact = audit_verify(data)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact" in intact.stdout

    server.stop()
    with sqlite3.connect(data / "radhub.sqlite3") as db:
        row = db.execute(
            "SELECT seq FROM history WHERE type = 'AuditEvent' ORDER BY seq LIMIT 1 OFFSET 1"
        ).fetchone()
        db.execute("DELETE FROM history WHERE seq = ?", row)
    broken = audit_verify(data)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout
