"""A referrer's access filter (a ``_has`` on Patient, a chain to it from every other
compartment type) on every adapter: the search each backend compiles and the
single-resource check answered by the store select the same resources."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.access import AccessPolicy, AuthContext, Interaction, PatientCompartment, ScopeSet
from fhir_server.access.policy import match_filter
from fhir_server.access.stored import ids_matching, lookup_in, matches_stored
from fhir_server.search.extract import extract_index
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import Store

from .conftest import at, resource_version


def _ref(kind: str, id: str) -> dict[str, str]:
    return {"reference": f"{kind}/{id}"}


WORLD: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "A"},
    {"resourceType": "Patient", "id": "B"},
    {"resourceType": "Patient", "id": "G", "generalPractitioner": [_ref("Practitioner", "r1")]},
    {"resourceType": "Patient", "id": "N"},
    *(
        {
            "resourceType": "ServiceRequest",
            "id": f"sr{p}",
            "status": status,
            "intent": "order",
            "subject": _ref("Patient", p),
            "requester": _ref("Practitioner", doc),
        }
        for p, doc, status in (
            ("A", "r1", "active"),
            ("B", "r2", "active"),
            ("N", "r1", "entered-in-error"),
        )
    ),
    *(
        {
            "resourceType": "DiagnosticReport",
            "id": f"dr{p}{status[0]}",
            "status": status,
            "code": {"text": "CT"},
            "subject": _ref("Patient", p),
        }
        for p in "ABGN"
        for status in ("final", "preliminary")
    ),
    *(
        {
            "resourceType": "Observation",
            "id": f"ob{p}",
            "status": "final",
            "code": {"text": "x"},
            "performer": [_ref("Patient", p)],
        }
        for p in "AB"
    ),  # fmt: skip
]

EXPECTED = {
    "Patient": {"A", "G"},
    "ServiceRequest": {"srA"},
    "DiagnosticReport": {"drAf", "drGf"},
    "Observation": {"obA"},
}

R1 = AuthContext(
    "u",
    "app",
    ScopeSet.parse("user/*.rs"),
    fhir_user="Practitioner/r1",
    roles=frozenset({"referrer"}),
)


@pytest.mark.parametrize("resource_type", sorted(EXPECTED))
async def test_search_and_single_checks_agree(
    store: Store, registry: SearchRegistry, resource_type: str
) -> None:
    await store.write_many([resource_version(registry, r, 1, at(i)) for i, r in enumerate(WORLD)])
    policy = AccessPolicy(PatientCompartment.load())
    where = policy.search_filter(R1, resource_type)
    assert where is not None
    assert set(await ids_matching(store, resource_type, where)) == EXPECTED[resource_type]
    lookup = lookup_in(store)
    for resource in (r for r in WORLD if r["resourceType"] == resource_type):
        entries = extract_index(resource, registry)
        seen = await matches_stored(
            where, resource_type, resource["id"], entries, lookup, match_filter
        )
        assert seen == (resource["id"] in EXPECTED[resource_type]), resource["id"]
    if resource_type == "Patient":
        # what the DICOM index can apply: studies by Patient; not reports (status too)
        assert policy.patient_scope(R1, "ImagingStudy", Interaction.READ) == where
        assert policy.patient_scope(R1, "DiagnosticReport", Interaction.READ) is None
