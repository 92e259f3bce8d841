from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.access import PatientCompartment
from fhir_server.search.values import IndexEntry, ReferenceValue, TokenValue

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fhir" / "compartment-patient-r4.json"


@pytest.fixture(scope="module")
def compartment() -> PatientCompartment:
    return PatientCompartment.load()


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        ("Observation", ("subject", "performer")),
        ("DiagnosticReport", ("subject",)),
        ("ImagingStudy", ("patient",)),
        ("ServiceRequest", ("subject", "performer")),
        ("Appointment", ("actor",)),
        ("Encounter", ("patient",)),
        ("Patient", ("link",)),
        ("Practitioner", ()),
        ("Organization", ()),
        ("Location", ()),
        ("Endpoint", ()),
        ("Device", ()),
        ("Binary", ()),
        ("NotAType", ()),
    ],
)
def test_params_for(
    compartment: PatientCompartment, resource_type: str, params: tuple[str, ...]
) -> None:
    assert compartment.params_for(resource_type) == params


def test_packaged_definition_matches_the_shared_one(compartment: PatientCompartment) -> None:
    if not SHARED.exists():
        pytest.skip("shared definitions not present")
    shared = PatientCompartment.from_definition(json.loads(SHARED.read_text()))
    assert dict(compartment.params) == dict(shared.params)


def test_rejects_another_compartment() -> None:
    with pytest.raises(ValueError):
        PatientCompartment.from_definition({"code": "Encounter", "resource": []})


def test_contains_type(compartment: PatientCompartment) -> None:
    assert compartment.contains_type("Patient")
    assert compartment.contains_type("Observation")
    assert not compartment.contains_type("Practitioner")


def ref(param: str, type_: str, id_: str) -> IndexEntry:
    return IndexEntry(param, ReferenceValue(type_, id_))


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "entries", "member"),
    [
        ("Patient", "p1", [], True),
        ("Patient", "p2", [ref("link", "Patient", "p1")], False),  # links are not followed
        ("Observation", "o1", [ref("subject", "Patient", "p1")], True),
        ("Observation", "o1", [ref("performer", "Patient", "p1")], True),
        ("Observation", "o1", [ref("subject", "Patient", "p2")], False),
        ("Observation", "o1", [ref("subject", "Group", "p1")], False),
        ("Observation", "o1", [ref("focus", "Patient", "p1")], False),  # not a compartment param
        ("Observation", "o1", [IndexEntry("subject", TokenValue(None, "p1"))], False),
        ("Observation", "o1", [], False),
        ("ImagingStudy", "i1", [ref("patient", "Patient", "p1")], True),
        ("Practitioner", "pr1", [ref("subject", "Patient", "p1")], False),
    ],
)
def test_is_member(
    compartment: PatientCompartment,
    resource_type: str,
    resource_id: str,
    entries: list[IndexEntry],
    member: bool,
) -> None:
    assert compartment.is_member(resource_type, resource_id, entries, "p1") is member
