"""The AuditEvent of an access to a patient's record names that Patient (IHE BALP),
also when the token names no patient: a clinician's or a system's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.compartment_patients import CompartmentPatients
from fhir_server.search.registry import SearchRegistry

BASE = "http://radhub.test/fhir"
PATIENTS = CompartmentPatients.build(
    PatientCompartment.load(), SearchRegistry.load().with_base_url(BASE)
)


def ref(text: str) -> dict[str, str]:
    return {"reference": text}


@pytest.mark.parametrize(
    ("resource_type", "body", "expected"),
    [
        ("Patient", {"resourceType": "Patient"}, None),  # named as what was accessed
        ("Observation", {"subject": ref("Patient/p1")}, "p1"),
        ("Observation", {"subject": ref(f"{BASE}/Patient/p1")}, "p1"),  # our own absolute URL
        ("Observation", {"subject": ref("http://elsewhere/fhir/Patient/p1")}, None),
        ("Observation", {"subject": ref("Group/g1"), "performer": [ref("Patient/p2")]}, "p2"),
        ("Observation", {"subject": ref("Patient/p1"), "performer": [ref("Patient/p2")]}, "p1"),
        ("Observation", {"subject": ref("Patient/p1/_history/3")}, "p1"),
        ("Observation", {"subject": {"display": "no reference"}}, None),
        ("Observation", {"subject": ref("Patient/")}, None),
        ("Observation", {"subject": ["not", "an", "object"]}, None),
        ("Observation", {"focus": [ref("Patient/p1")]}, None),  # not a compartment parameter
        ("ImagingStudy", {"subject": ref("Patient/p3")}, "p3"),
        ("ImagingStudy", {"subject": ref("Device/d1")}, None),
        ("Appointment", {"participant": [{"actor": ref("Practitioner/x")}]}, None),
        (
            "Appointment",
            {"participant": [{"actor": ref("Practitioner/x")}, {"actor": ref("Patient/p4")}]},
            "p4",
        ),
        ("DiagnosticReport", {"subject": ref("Patient/p5")}, "p5"),
        ("ServiceRequest", {"performer": [ref("Patient/p6")]}, "p6"),
        ("Practitioner", {"id": "x"}, None),  # never in a compartment
        ("Endpoint", {"id": "x"}, None),
    ],
)
def test_whose_record_a_resource_is(
    resource_type: str, body: dict[str, Any], expected: str | None
) -> None:
    assert PATIENTS.patient_of(resource_type, body) == expected


def test_every_compartment_type_of_the_registry_is_covered() -> None:
    """Each type the definition puts in the compartment and the registry knows has a way
    to find its patient, so no type's accesses go unnamed."""
    registry = SearchRegistry.load()
    compartment = PatientCompartment.load()
    expected = {
        t
        for t in registry.types
        if t != "Patient" and any(registry.param(t, code) for code in compartment.params_for(t))
    }
    assert set(PATIENTS.routes) == expected
    assert {"Observation", "ImagingStudy", "DiagnosticReport", "ServiceRequest"} <= expected


Flush = Callable[[], Awaitable[None]]


async def _events_of(client: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    r = await client.get(f"/fhir/AuditEvent?{query}&_count=100")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _named_patients(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["reference"]
        for e in event.get("entity", [])
        if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
    ]


async def test_a_clinicians_reads_and_writes_are_audited_under_the_patient(
    client: httpx.AsyncClient, flush_audit: Flush
) -> None:
    """A create, an update, a read (on the short read lane), a read the routes answer
    (``_summary``), a vread and a delete: each AuditEvent names the Observation's Patient, found
    by ``AuditEvent?patient=``; a Practitioner's read names none."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": "Patient/pA"},
    }
    created = await client.post("/fhir/Observation", json=observation)
    assert created.status_code == 201, created.text
    oid = created.json()["id"]
    updated = await client.put(
        f"/fhir/Observation/{oid}", json={**created.json(), "status": "amended"}
    )
    assert updated.status_code == 200, updated.text
    assert (await client.get(f"/fhir/Observation/{oid}")).status_code == 200
    assert (await client.get(f"/fhir/Observation/{oid}?_summary=true")).status_code == 200
    assert (await client.get(f"/fhir/Observation/{oid}/_history/1")).status_code == 200
    assert (await client.delete(f"/fhir/Observation/{oid}")).status_code == 204
    practitioner = await client.post(
        "/fhir/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "X"}]}
    )
    assert (await client.get(f"/fhir/Practitioner/{practitioner.json()['id']}")).status_code == 200
    await flush_audit()

    about = await _events_of(client, f"entity=Observation/{oid}")
    kinds = sorted(ev["subtype"][0]["code"] for ev in about)
    assert kinds == ["create", "delete", "read", "read", "update", "vread"]
    for event in about:
        assert _named_patients(event) == ["Patient/pA"], event
    by_patient = {ev["id"] for ev in await _events_of(client, "patient=Patient/pA")}
    assert {ev["id"] for ev in about} <= by_patient
    (read,) = await _events_of(
        client, f"entity=Practitioner/{practitioner.json()['id']}&subtype=read"
    )
    assert _named_patients(read) == []


async def test_a_refused_read_names_no_patient(
    client: httpx.AsyncClient, flush_audit: Flush
) -> None:
    """Nothing was shown, so nothing names whose record it would have been."""
    assert (await client.get("/fhir/Observation/nothing-here")).status_code == 404
    await flush_audit()
    (event,) = await _events_of(client, "entity=Observation/nothing-here")
    assert event["outcome"] == "4"
    assert _named_patients(event) == []


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        ("Observation", [("subject", "Patient/p1")], "p1"),
        ("Observation", [("patient", "p1")], "p1"),
        ("Observation", [("patient", "Patient/p1"), ("code", "x")], "p1"),
        ("Observation", [("subject:Patient", "p1")], "p1"),
        ("Observation", [("subject", f"{BASE}/Patient/p1")], "p1"),
        ("Observation", [("subject", "p1")], None),  # a Group's id, for all we know
        ("Observation", [("subject", "Group/g1")], None),
        ("Observation", [("patient", "p1,p2")], None),  # several
        ("Observation", [("patient", "p1"), ("performer", "Patient/p2")], None),
        ("Observation", [("patient", "p1"), ("subject", "Patient/p1")], "p1"),
        ("Observation", [("patient.name", "smith")], None),  # a chain
        ("Observation", [("subject:Group", "g1")], None),
        ("Observation", [("code", "Patient/p1")], None),  # not a compartment parameter
        ("ImagingStudy", [("patient", "p3"), ("modality", "CT")], "p3"),
        ("Practitioner", [("name", "x")], None),
        (None, [("patient", "p1")], None),  # a system search
    ],
)
def test_the_patient_a_search_asks_for(
    resource_type: str | None, params: list[tuple[str, str]], expected: str | None
) -> None:
    assert PATIENTS.patient_asked_for(resource_type, params) == expected


async def test_searches_and_histories_of_one_patient_are_audited_under_them(
    client: httpx.AsyncClient, flush_audit: Flush
) -> None:
    """A search restricted to one patient, a compartment search, $everything and the
    Patient's history each name that Patient; a search over all patients names none."""
    patient = await client.post("/fhir/Patient", json={"resourceType": "Patient"})
    pid = patient.json()["id"]
    asked = [
        f"/fhir/Observation?patient={pid}",
        f"/fhir/Patient/{pid}/Observation",
        f"/fhir/Patient/{pid}/$everything",
        f"/fhir/Patient/{pid}/_history",
    ]
    for url in asked:
        assert (await client.get(url)).status_code == 200, url
    assert (
        await client.post("/fhir/Observation/_search", data={"subject": f"Patient/{pid}"})
    ).status_code == 200
    assert (await client.get("/fhir/Observation?code=weight")).status_code == 200
    await flush_audit()

    named = await _events_of(client, f"patient=Patient/{pid}")
    kinds = sorted(ev["subtype"][0]["code"] for ev in named)
    assert kinds == sorted(
        [
            "create",
            "search-type",
            "search-compartment",
            "operation",
            "history-instance",
            "search-type",
        ]
    )
    (broad,) = [
        ev
        for ev in await _events_of(client, "subtype=search-type")
        if "code=weight" in ev["entity"][0].get("description", "")
    ]
    assert _named_patients(broad) == []


@pytest.mark.parametrize(
    ("resource", "patient", "expected"),
    [
        # the Patient read is the one whose record it is: one entity, in the Patient role
        (("Patient", "p1"), "p1", [("Patient/p1", "1")]),
        (("Patient", "p1"), "p2", [("Patient/p1", None), ("Patient/p2", "1")]),
        (("Observation", "o1"), "p1", [("Observation/o1", None), ("Patient/p1", "1")]),
        (("Observation", "o1"), None, [("Observation/o1", None)]),
    ],
)
def test_the_patient_entity(
    resource: tuple[str, str], patient: str | None, expected: list[tuple[str, str | None]]
) -> None:
    from datetime import UTC, datetime

    from fhir_server.audit import AuditRecord, to_audit_event

    record = AuditRecord("read", 200, datetime.now(UTC), None, *resource, patient=patient)
    entities = to_audit_event(record)["entity"]
    assert [(e["what"]["reference"], e.get("role", {}).get("code")) for e in entities] == expected
