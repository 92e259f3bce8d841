"""The CapabilityStatement tells the truth: everything it lists works.
See https://hl7.org/fhir/R4/capabilitystatement.html and https://hl7.org/fhir/R4/http.html#capabilities"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
STRICT = {"Prefer": "handling=strict"}

# A plausible value for each search parameter type (the point is the parameter
# is understood, not that anything matches).
VALUE_OF_TYPE = {
    "string": "abc",
    "token": "http://example.org|abc",
    "date": "ge2020-01-01",
    "reference": "Patient/abc",
    "number": "1",
    "quantity": "5.4|http://unitsofmeasure.org|mg",
    "uri": "http://example.org/abc",
}

# Minimal valid instances of every type the server serves (R4 required elements).
MINIMAL: dict[str, dict[str, Any]] = {
    "Patient": {},
    "ServiceRequest": {
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
    },
    "Appointment": {
        "status": "proposed",
        "participant": [{"actor": {"reference": "Patient/p"}, "status": "needs-action"}],
    },
    "ImagingStudy": {"status": "available", "subject": {"reference": "Patient/p"}},
    "DiagnosticReport": {"status": "final", "code": {"text": "x"}},
    "Practitioner": {},
    "PractitionerRole": {},
    "Organization": {"name": "x"},
    "Location": {},
    "Encounter": {"status": "planned", "class": {"code": "AMB"}},
    "Observation": {"status": "final", "code": {"text": "x"}},
    "Procedure": {"status": "completed", "subject": {"reference": "Patient/p"}},
    "Endpoint": {
        "status": "active",
        "connectionType": {"code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "http://example.org/wado",
    },
    "Device": {},
    "Schedule": {"actor": [{"reference": "Practitioner/x"}]},
    "Slot": {
        "schedule": {"reference": "Schedule/x"},
        "status": "free",
        "start": "2024-01-01T09:00:00Z",
        "end": "2024-01-01T09:30:00Z",
    },
    "Provenance": {
        "target": [{"reference": "Patient/p"}],
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/x"}}],
    },
    "Subscription": {
        "status": "off",  # requested or active: notifications are not sent (422)
        "reason": "x",
        "criteria": "Patient?",
        "channel": {"type": "rest-hook", "endpoint": "http://example.org/hook"},
    },
    "Binary": {"contentType": "text/plain", "data": "aGk="},
    "DocumentReference": {
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain"}}],
    },
}


@pytest.fixture
async def capability(anon: httpx.AsyncClient) -> dict[str, Any]:
    r = await anon.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict)
    return body


def _resources(capability: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in capability["rest"][0]["resource"]}


async def test_metadata_without_token(anon: httpx.AsyncClient, capability: dict[str, Any]) -> None:
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["kind"] == "instance"
    assert "application/fhir+json" in capability["format"]
    assert capability["implementation"]["url"] == "http://radhub.test/fhir"
    rest = capability["rest"][0]
    assert rest["mode"] == "server"
    codes = [c["code"] for s in rest["security"]["service"] for c in s["coding"]]
    assert "SMART-on-FHIR" in codes
    r = await anon.get("/fhir/metadata", headers={"Authorization": "Bearer junk"})
    assert r.status_code == 200


async def test_every_listed_type_exists(capability: dict[str, Any]) -> None:
    listed = set(_resources(capability))
    assert listed == set(MINIMAL) | {"AuditEvent"}


async def _exercise(client: httpx.AsyncClient, rtype: str, codes: set[str]) -> None:
    """Perform each listed interaction on ``rtype`` and check it worked."""
    body = {"resourceType": rtype, **MINIMAL[rtype]}
    rid = "cap-" + rtype.lower()
    if "create" in codes:
        r = await client.post(f"/fhir/{rtype}", json=body, headers=FHIR)
        assert r.status_code == 201, (rtype, r.text)
    if "update" in codes:
        r = await client.put(f"/fhir/{rtype}/{rid}", json={**body, "id": rid}, headers=FHIR)
        assert r.status_code == 201, (rtype, r.text)
    if "patch" in codes:
        ops = [{"op": "add", "path": "/meta/tag", "value": [{"code": "patched"}]}]
        r = await client.patch(f"/fhir/{rtype}/{rid}", json=ops, headers=PATCH)
        assert r.status_code == 200, (rtype, r.text)
    if "read" in codes:
        r = await client.get(f"/fhir/{rtype}/{rid}")
        assert r.status_code == 200, (rtype, r.text)
    if "vread" in codes:
        r = await client.get(f"/fhir/{rtype}/{rid}/_history/1")
        assert r.status_code == 200, (rtype, r.text)
    if "history-instance" in codes:
        r = await client.get(f"/fhir/{rtype}/{rid}/_history")
        assert r.status_code == 200, (rtype, r.text)
        assert r.json()["total"] >= 1
    if "history-type" in codes:
        r = await client.get(f"/fhir/{rtype}/_history")
        assert r.status_code == 200, (rtype, r.text)
    if "search-type" in codes:
        r = await client.get(f"/fhir/{rtype}?_id={rid}", headers=STRICT)
        assert r.status_code == 200, (rtype, r.text)
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [rid]
    if "delete" in codes:
        r = await client.delete(f"/fhir/{rtype}/{rid}")
        assert r.status_code in (200, 204), (rtype, r.text)
        assert (await client.get(f"/fhir/{rtype}/{rid}")).status_code == 410


async def test_listed_interactions_work(
    client: httpx.AsyncClient, capability: dict[str, Any]
) -> None:
    for rtype, resource in _resources(capability).items():
        codes = {i["code"] for i in resource["interaction"]}
        if rtype == "AuditEvent":
            # server-written: reads only, and the write interactions are not listed
            assert codes.isdisjoint({"create", "update", "patch", "delete"})
            await client.get("/fhir/Patient/trigger-an-audit-event")
            continue
        await _exercise(client, rtype, codes)
        if resource.get("conditionalCreate"):
            r = await client.post(
                f"/fhir/{rtype}",
                json={"resourceType": rtype, **MINIMAL[rtype]},
                headers={**FHIR, "If-None-Exist": f"_id=cap-{rtype.lower()}"},
            )
            assert r.status_code in (200, 201), (rtype, r.text)
        if resource.get("conditionalUpdate"):
            r = await client.put(
                f"/fhir/{rtype}?_id=cond-{rtype.lower()}",
                json={"resourceType": rtype, **MINIMAL[rtype]},
                headers=FHIR,
            )
            assert r.status_code == 201, (rtype, r.text)
        if resource.get("conditionalDelete") == "single":
            r = await client.delete(f"/fhir/{rtype}?_id=cond-{rtype.lower()}")
            assert r.status_code in (200, 204), (rtype, r.text)


async def test_system_interactions_work(
    client: httpx.AsyncClient, capability: dict[str, Any]
) -> None:
    codes = {i["code"] for i in capability["rest"][0]["interaction"]}
    if "history-system" in codes:
        assert (await client.get("/fhir/_history")).status_code == 200
    if "search-system" in codes:
        r = await client.get("/fhir?_type=Patient", headers=STRICT)
        assert r.status_code == 200, r.text
    for kind in ("batch", "transaction"):
        if kind in codes:
            bundle = {
                "resourceType": "Bundle",
                "type": kind,
                "entry": [
                    {
                        "resource": {"resourceType": "Patient"},
                        "request": {"method": "POST", "url": "Patient"},
                    }
                ],
            }
            r = await client.post("/fhir", json=bundle, headers=FHIR)
            assert r.status_code == 200, r.text


async def test_listed_search_parameters_are_understood(
    client: httpx.AsyncClient, capability: dict[str, Any]
) -> None:
    refused: list[str] = []
    for rtype, resource in _resources(capability).items():
        for param in resource.get("searchParam", []):
            name, ptype = param["name"], param["type"]
            if ptype in ("composite", "special"):
                continue  # checked below with real values
            value = VALUE_OF_TYPE[ptype]
            if name == "_id":
                value = "abc"
            r = await client.get(f"/fhir/{rtype}", params={name: value}, headers=STRICT)
            if r.status_code != 200:
                refused.append(f"{rtype}?{name}={value} → {r.status_code}: {r.text[:200]}")
    assert not refused, "\n".join(refused)


async def test_listed_composite_and_special_parameters(
    client: httpx.AsyncClient, capability: dict[str, Any]
) -> None:
    listed = {
        (rtype, p["name"]): p["type"]
        for rtype, resource in _resources(capability).items()
        for p in resource.get("searchParam", [])
        if p["type"] in ("composite", "special")
    }
    samples = {
        ("Observation", "code-value-quantity"): "http://loinc.org|1234-5$gt5.4",
        ("Observation", "code-value-concept"): "http://loinc.org|1234-5$http://snomed.info/sct|1",
        ("Observation", "code-value-date"): "http://loinc.org|1234-5$ge2020",
        ("Observation", "code-value-string"): "http://loinc.org|1234-5$abc",
        ("Observation", "combo-code-value-quantity"): "http://loinc.org|1234-5$gt5.4",
        ("Observation", "combo-code-value-concept"): "http://loinc.org|1234-5$abc",
        ("Observation", "component-code-value-quantity"): "http://loinc.org|1234-5$gt5.4",
        ("Observation", "component-code-value-concept"): "http://loinc.org|1234-5$abc",
        ("Location", "near"): "42.256|-83.694|11.2|km",
        ("DocumentReference", "relationship"): "DocumentReference/abc$replaces",
    }
    refused: list[str] = []
    for (rtype, name), _ in sorted(listed.items()):
        value = samples.get((rtype, name))
        if value is None:
            refused.append(f"{rtype}?{name}: listed, but this test has no sample value")
            continue
        r = await client.get(f"/fhir/{rtype}", params={name: value}, headers=STRICT)
        if r.status_code != 200:
            refused.append(f"{rtype}?{name}={value} → {r.status_code}: {r.text[:200]}")
    assert not refused, "\n".join(refused)
