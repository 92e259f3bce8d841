"""What a new user does first, against a real ``radhub serve --demo`` process:
a token from ``radhub token``, then create, read, update, version-read, patch,
delete and history each of the five main types; a 100-entry transaction with
``urn:uuid`` references lands whole, and one bad entry rolls it all back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "fhir" / "examples"
FHIR = {"Content-Type": "application/fhir+json"}
MAIN_TYPES = {
    "Patient": "patient-example.json",
    "ServiceRequest": "servicerequest-example-di.json",
    "Appointment": "appointment-example.json",
    "ImagingStudy": "imagingstudy-example.json",
    "DiagnosticReport": "diagnosticreport-example-ultrasound.json",
}


@pytest.fixture
def fhir(
    tmp_path: Path, radhub_server: Callable[..., Any], radhub_cli: Callable[..., str]
) -> Iterator[httpx.Client]:
    data = tmp_path / "data"
    server = radhub_server(data, None, "--demo")
    token = radhub_cli("token", "--data-dir", str(data), "--scope", "system/*.cruds")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{server.base}/fhir", headers=headers, timeout=30) as client:
        yield client


def _example(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    resource.pop("id", None)
    resource.pop("meta", None)
    return resource


def test_demo_data_is_there(fhir: httpx.Client) -> None:
    bundle = fhir.get("/Patient", params={"_count": "5", "_total": "accurate"}).json()
    assert bundle["total"] >= 20
    orders = fhir.get("/ServiceRequest", params={"_total": "accurate"}).json()
    assert orders["total"] >= 20
    completed = fhir.get("/ServiceRequest", params={"status": "completed", "_total": "accurate"})
    done = completed.json()["total"]
    assert done > 0
    # images for each completed order, in the archive and as ImagingStudy resources
    studies = fhir.get(fhir.base_url.copy_with(path="/dicomweb/studies"))
    assert studies.status_code == 200 and len(studies.json()) == done
    deadline = time.monotonic() + 30
    while True:
        imaging = fhir.get(
            "/ImagingStudy", params={"basedon:missing": "false", "_total": "accurate"}
        )
        if imaging.json()["total"] == done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert imaging.json()["total"] == done


@pytest.mark.parametrize("resource_type", MAIN_TYPES)
def test_lifecycle_of_each_main_type(fhir: httpx.Client, resource_type: str) -> None:
    created = fhir.post(f"/{resource_type}", json=_example(MAIN_TYPES[resource_type]), headers=FHIR)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.headers["etag"] == 'W/"1"'

    body = fhir.get(f"/{resource_type}/{rid}").json()
    marker = "radhub-e2e-second-version"
    body["text"] = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{marker}</div>',
    }
    updated = fhir.put(f"/{resource_type}/{rid}", json=body, headers=FHIR)
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"

    patch = [{"op": "add", "path": "/language", "value": "en"}]
    patched = fhir.patch(
        f"/{resource_type}/{rid}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 200 and patched.json()["language"] == "en"

    first = fhir.get(f"/{resource_type}/{rid}/_history/1").json()
    assert first["meta"]["versionId"] == "1" and marker not in json.dumps(first)

    assert fhir.delete(f"/{resource_type}/{rid}").status_code == 204
    assert fhir.get(f"/{resource_type}/{rid}").status_code == 410
    history = fhir.get(f"/{resource_type}/{rid}/_history").json()
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "PUT", "PUT", "POST"]


def _transaction(size: int, bad_at: int | None = None) -> dict[str, Any]:
    entries = []
    for n in range(size // 2):
        uuid = f"urn:uuid:9a3c1d4e-0000-4000-8000-{n:012d}"
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:e2e", "value": str(n)}],
        }
        order = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": uuid},
        }
        entries.append(
            {"fullUrl": uuid, "resource": patient, "request": {"method": "POST", "url": "Patient"}}
        )
        entries.append({"resource": order, "request": {"method": "POST", "url": "ServiceRequest"}})
    if bad_at is not None:
        entries[bad_at]["resource"] = {"resourceType": "Patient", "birthDate": "not-a-date"}
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_transaction_of_100_lands_whole_or_not_at_all(fhir: httpx.Client) -> None:
    failed = fhir.post("", json=_transaction(100, bad_at=72), headers=FHIR)
    assert failed.status_code == 400, failed.text
    assert "Bundle.entry[72]" in failed.text
    none = fhir.get("/Patient", params={"identifier": "urn:e2e|", "_total": "accurate"}).json()
    assert none["total"] == 0

    landed = fhir.post("", json=_transaction(100), headers=FHIR)
    assert landed.status_code == 200, landed.text
    statuses = {e["response"]["status"] for e in landed.json()["entry"]}
    assert statuses == {"201 Created"}
    patients = fhir.get("/Patient", params={"identifier": "urn:e2e|", "_total": "accurate"}).json()
    assert patients["total"] == 50
    order = fhir.get("/ServiceRequest", params={"subject.identifier": "urn:e2e|7"}).json()
    assert len(order["entry"]) == 1
    assert order["entry"][0]["resource"]["subject"]["reference"].startswith("Patient/")
