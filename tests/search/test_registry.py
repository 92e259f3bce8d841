"""The R4 definitions load as data and select the right branch per type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.search.registry import (
    SearchRegistry,
    branch_type,
    branches_for,
    split_union,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fhir" / "search-parameters-r4.json"


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    return SearchRegistry.load()


@pytest.mark.parametrize(
    ("resource_type", "code", "param_type", "expression"),
    [
        ("Patient", "identifier", "token", "Patient.identifier"),
        ("Patient", "name", "string", "Patient.name"),
        ("Patient", "birthdate", "date", "Patient.birthDate"),
        ("Patient", "death-date", "date", "(Patient.deceased as dateTime)"),
        ("Patient", "email", "token", "Patient.telecom.where(system='email')"),
        ("ImagingStudy", "basedon", "reference", "ImagingStudy.basedOn"),
        (
            "ImagingStudy",
            "patient",
            "reference",
            "ImagingStudy.subject.where(resolve() is Patient)",
        ),
        (
            "ImagingStudy",
            "endpoint",
            "reference",
            "ImagingStudy.endpoint | ImagingStudy.series.endpoint",
        ),
        ("ImagingStudy", "started", "date", "ImagingStudy.started"),
        ("DiagnosticReport", "code", "token", "DiagnosticReport.code"),
        ("DiagnosticReport", "date", "date", "DiagnosticReport.effective"),
        ("ServiceRequest", "code", "token", "ServiceRequest.code"),
        (
            "DocumentReference",
            "identifier",
            "token",
            "DocumentReference.masterIdentifier | DocumentReference.identifier",
        ),
        (
            "Observation",
            "value-string",
            "string",
            "(Observation.value as string) | (Observation.value as CodeableConcept).text",
        ),
        ("Patient", "_id", "token", "Resource.id"),
        ("Binary", "_lastUpdated", "date", "Resource.meta.lastUpdated"),
        ("Slot", "_tag", "token", "Resource.meta.tag"),
        ("Endpoint", "_profile", "uri", "Resource.meta.profile"),
        ("Device", "_security", "token", "Resource.meta.security"),
        ("Location", "_source", "uri", "Resource.meta.source"),
    ],
)
def test_param_branch(
    registry: SearchRegistry, resource_type: str, code: str, param_type: str, expression: str
) -> None:
    param = registry.param(resource_type, code)
    assert param is not None
    assert (param.type, param.expression) == (param_type, expression)


@pytest.mark.parametrize(
    ("resource_type", "code"),
    [
        ("Patient", "_text"),  # no expression in R4
        ("Patient", "_content"),
        ("Patient", "_query"),
        ("Location", "near"),  # special: geo search not offered
        ("Binary", "identifier"),
        ("Patient", "code"),
        ("Basic", "code"),  # not a served type
    ],
)
def test_unsupported_params_absent(registry: SearchRegistry, resource_type: str, code: str) -> None:
    assert registry.param(resource_type, code) is None


def test_counts_per_type(registry: SearchRegistry) -> None:
    # Binary has only the 6 common parameters; Patient 23 + 6 common - phonetic counts once.
    assert set(registry.params_for("Binary")) == {
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
    }
    assert len(registry.params_for("Patient")) == 29
    assert "AppointmentResponse" not in registry.types
    assert "ImagingStudy" in registry.types


def test_composite_components_typed(registry: SearchRegistry) -> None:
    param = registry.param("Observation", "code-value-quantity")
    assert param is not None
    assert [(c.type, c.expression) for c in param.components] == [
        ("token", "code"),
        ("quantity", "value.as(Quantity)"),
    ]


def test_reference_targets(registry: SearchRegistry) -> None:
    param = registry.param("ImagingStudy", "subject")
    assert param is not None and set(param.targets) == {"Group", "Device", "Patient"}


def test_common_param(registry: SearchRegistry) -> None:
    assert registry.common_param(("Patient", "Practitioner"), "identifier") is not None
    assert registry.common_param(("Patient", "ImagingStudy"), "name") is None
    assert registry.common_param(registry.types, "_tag") is not None


def test_packaged_copy_matches_shared() -> None:
    if not SHARED.exists():
        pytest.skip("shared reference data not present")
    packaged = SearchRegistry.load()
    shared = SearchRegistry.from_definitions(json.loads(SHARED.read_text()), packaged.types)
    assert shared == packaged


@pytest.mark.parametrize(
    ("expression", "branches"),
    [
        ("A.b | B.c", ["A.b", "B.c"]),
        ("(A.b as X) | A.c.where(x = 'a|b')", ["(A.b as X)", "A.c.where(x = 'a|b')"]),
        ("A", ["A"]),
    ],
)
def test_split_union(expression: str, branches: list[str]) -> None:
    assert split_union(expression) == branches


def test_branch_selection_allows_paren() -> None:
    assert branch_type("(Observation.value as Quantity)") == "Observation"
    expression = "AllergyIntolerance.patient | (Observation.value as X).y | Observation.subject"
    assert branches_for(expression, "Observation") == [
        "(Observation.value as X).y",
        "Observation.subject",
    ]
