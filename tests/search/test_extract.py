"""Extraction from the official examples and from small hand-made resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.search.dates import MAX_TIME, MIN_TIME, parse_date_range
from fhir_server.search.extract import extract_index, parse_reference
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.values import (
    CompositeValue,
    DateRange,
    IndexEntry,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    Value,
    normalize_text,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir" / "examples"


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    return SearchRegistry.load()


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())  # type: ignore[no-any-return]


def _values(entries: list[IndexEntry], param: str) -> list[Value]:
    return [e.value for e in entries if e.param == param]


def _range(text: str) -> DateRange:
    found = parse_date_range(text)
    assert found is not None
    return found


EXAMPLE_CASES: list[tuple[str, str, Value]] = [
    ("patient-example.json", "family", StringValue("chalmers", "Chalmers")),
    ("patient-example.json", "given", StringValue("jim", "Jim")),
    ("patient-example.json", "name", StringValue("peter", "Peter")),
    (
        "patient-example.json",
        "identifier",
        TokenValue("urn:oid:1.2.36.146.595.217.0.1", "12345", None),
    ),
    ("patient-example.json", "birthdate", _range("1974-12-25")),
    ("patient-example.json", "gender", TokenValue(None, "male")),
    ("patient-example.json", "active", TokenValue(None, "true")),
    ("patient-example.json", "address-city", StringValue("pleasantville", "PleasantVille")),
    ("patient-example.json", "phone", TokenValue(None, "(03) 5555 6473")),
    ("patient-example.json", "organization", ReferenceValue("Organization", "1")),
    ("patient-example.json", "deceased", TokenValue(None, "false")),
    ("patient-example-f201-roel.json", "deceased", TokenValue(None, "false")),
    ("imagingstudy-example-xr.json", "basedon", ReferenceValue("ServiceRequest", "example")),
    ("imagingstudy-example-xr.json", "patient", ReferenceValue("Patient", "dicom")),
    (
        "imagingstudy-example-xr.json",
        "modality",
        TokenValue("http://dicom.nema.org/resources/ontology/DCM", "DX"),
    ),
    ("imagingstudy-example-xr.json", "started", _range("2017-01-01T11:01:20+03:00")),
    ("imagingstudy-example-xr.json", "endpoint", ReferenceValue("Endpoint", "example-wadors")),
    (
        "imagingstudy-example-xr.json",
        "identifier:of-type",
        TokenValue("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN", "W12342398"),
    ),
    ("imagingstudy-example.json", "status", TokenValue(None, "available")),
    (
        "observation-example.json",
        "value-quantity",
        QuantityValue(185.0, 185.0, 185.0, "http://unitsofmeasure.org", "[lb_av]", "lbs"),
    ),
    ("observation-example.json", "date", _range("2016-03-28")),
    ("observation-example.json", "code", TokenValue("http://loinc.org", "29463-7", "body weight")),
    ("observation-example.json", "patient", ReferenceValue("Patient", "example")),
    ("appointment-example.json", "date", _range("2013-12-10T09:00:00Z")),
    ("appointment-example.json", "practitioner", ReferenceValue("Practitioner", "example")),
    ("appointment-example.json", "location", ReferenceValue("Location", "1")),
    (
        "servicerequest-example-di.json",
        "code",
        TokenValue("http://loinc.org", "24627-2", "chest ct"),
    ),
    ("diagnosticreport-example-f201-brainct.json", "subject", ReferenceValue("Patient", "f201")),
    (
        "endpoint-example-wadors.json",
        "connection-type",
        TokenValue(
            "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "dicom-wado-rs"
        ),
    ),
    ("slot-example.json", "schedule", ReferenceValue("Schedule", "example")),
    (
        "schedule-example.json",
        "date",
        DateRange(_range("2013-12-25T09:15:00Z").low, _range("2013-12-25T09:30:00Z").high),
    ),
]


@pytest.mark.parametrize(
    ("name", "param", "value"), EXAMPLE_CASES, ids=[f"{n}:{p}" for n, p, _ in EXAMPLE_CASES]
)
def test_example_value(registry: SearchRegistry, name: str, param: str, value: Value) -> None:
    entries = extract_index(_example(name), registry)
    assert value in _values(entries, param), _values(entries, param)


ABSENT_CASES = [
    ("patient-example.json", "_id"),
    ("patient-example.json", "_lastUpdated"),
    ("patient-example.json", "death-date"),
    ("imagingstudy-example.json", "basedon"),
    ("patient-example.json", "email"),  # telecom has phone and no email
]


@pytest.mark.parametrize(("name", "param"), ABSENT_CASES)
def test_no_values(registry: SearchRegistry, name: str, param: str) -> None:
    assert _values(extract_index(_example(name), registry), param) == []


def test_email_is_only_email(registry: SearchRegistry) -> None:
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b.c"}],
    }
    entries = extract_index(patient, registry)
    assert _values(entries, "email") == [TokenValue(None, "a@b.c")]
    assert _values(entries, "phone") == [TokenValue(None, "1")]
    assert len(_values(entries, "telecom")) == 2


def test_all_examples_extract(registry: SearchRegistry) -> None:
    """Every supported example yields entries; each is of its parameter's value kind."""
    kinds = {
        "string": StringValue,
        "token": TokenValue,
        "date": DateRange,
        "reference": ReferenceValue,
        "quantity": QuantityValue,
        "number": NumberValue,
        "uri": UriValue,
        "composite": CompositeValue,
    }
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        if not registry.supports(resource["resourceType"]):
            continue
        entries = extract_index(resource, registry)
        assert entries, path.name
        for entry in entries:
            code = entry.param.split(":")[0]
            param = registry.param(resource["resourceType"], code)
            assert param is not None
            expected = TokenValue if ":" in entry.param else kinds[param.type]
            assert isinstance(entry.value, expected), (path.name, entry)


def test_deceased_datetime_is_true(registry: SearchRegistry) -> None:
    patient = {"resourceType": "Patient", "deceasedDateTime": "2020-02-03"}
    entries = extract_index(patient, registry)
    assert _values(entries, "deceased") == [TokenValue(None, "true")]
    assert _values(entries, "death-date") == [_range("2020-02-03")]


def test_period_open_end(registry: SearchRegistry) -> None:
    encounter = {"resourceType": "Encounter", "period": {"start": "2024-01-02"}}
    (value,) = _values(extract_index(encounter, registry), "date")
    assert value == DateRange(_range("2024-01-02").low, MAX_TIME)
    encounter = {"resourceType": "Encounter", "period": {"end": "2024-01-02"}}
    (value,) = _values(extract_index(encounter, registry), "date")
    assert value == DateRange(MIN_TIME, _range("2024-01-02").high)


def test_reference_forms(registry: SearchRegistry) -> None:
    study = {
        "resourceType": "ImagingStudy",
        "subject": {"reference": "http://other.org/fhir/Patient/9"},
        "basedOn": [
            {"reference": "ServiceRequest/1/_history/2"},
            {"reference": "#contained"},
            {"identifier": {"system": "urn:acc", "value": "A1"}},
        ],
    }
    entries = extract_index(study, registry)
    assert _values(entries, "subject") == [
        ReferenceValue(None, None, "http://other.org/fhir/Patient/9")
    ]
    assert _values(entries, "patient") == [
        ReferenceValue(None, None, "http://other.org/fhir/Patient/9")
    ]
    assert _values(entries, "basedon") == [
        ReferenceValue("ServiceRequest", "1", version="2"),
        ReferenceValue(None, None, "#contained"),
    ]
    assert _values(entries, "basedon:identifier") == [TokenValue("urn:acc", "A1")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient/1", ReferenceValue("Patient", "1")),
        ("Patient/1/_history/3", ReferenceValue("Patient", "1", version="3")),
        ("#p1", ReferenceValue(None, None, "#p1")),
        ("urn:uuid:123", ReferenceValue(None, None, "urn:uuid:123")),
        ("nonsense", None),
        ("a/b/c", None),
    ],
)
def test_parse_reference(text: str, expected: ReferenceValue | None) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Müller", "muller"),
        ("ÅSA", "asa"),
        ("Nguyễn", "nguyen"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("  two   words ", "two words"),
        ("ﬁne", "fine"),
    ],
)
def test_normalize_text(text: str, normalized: str) -> None:
    assert normalize_text(text) == normalized


def test_ascii_text_normalizes_as_the_general_rule_would() -> None:
    """ASCII takes a short cut (no accents to drop): the same result, every character."""
    import unicodedata

    def general(text: str) -> str:
        decomposed = unicodedata.normalize("NFKD", text)
        stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
        return " ".join(stripped.casefold().split())

    every_ascii = "".join(chr(c) for c in range(128))
    for text in [every_ascii, "O'Brien-SMITH  Jr.", "\tTab\x0bbed\x1cText\n", "A^B^^C"]:
        assert text.isascii()
        assert normalize_text(text) == general(text), text


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        ("2024-12", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024-02-28", "2024-02-28T00:00:00Z", "2024-02-29T00:00:00Z"),
        ("2024-02-28T10:15", "2024-02-28T10:15:00Z", "2024-02-28T10:16:00Z"),
        ("2024-02-28T10:15:30+02:00", "2024-02-28T08:15:30Z", "2024-02-28T08:15:31Z"),
    ],
)
def test_date_precision(text: str, low: str, high: str) -> None:
    found = _range(text)
    assert (found.low, found.high) == (_range(low).low, _range(high).low)


def test_fraction_precision() -> None:
    found = _range("2024-02-28T10:15:30.25Z")
    assert found.high - found.low == 10_000
    assert found.low == _range("2024-02-28T10:15:30Z").low + 250_000


@pytest.mark.parametrize("text", ["2024-13", "2024-02-30", "24", "2024-01-01T25:00", "today"])
def test_bad_dates(text: str) -> None:
    assert parse_date_range(text) is None


def test_composite_pairs_code_and_value(registry: SearchRegistry) -> None:
    entries = extract_index(_example("observation-example.json"), registry)
    pairs = _values(entries, "code-value-quantity")
    assert len(pairs) == 4
    assert all(isinstance(p, CompositeValue) and len(p.components) == 2 for p in pairs)
    first = pairs[0]
    assert isinstance(first, CompositeValue)
    assert first.components[0] == TokenValue("http://loinc.org", "29463-7", "body weight")


def test_concept_text_without_coding(registry: SearchRegistry) -> None:
    observation = {"resourceType": "Observation", "code": {"text": "Free Téxt"}}
    entries = extract_index(observation, registry)
    assert _values(entries, "code") == [TokenValue(None, None, "free text")]


def test_skipping_absent_parameters_changes_nothing() -> None:
    """extract_index skips parameters whose top-level elements are absent (and
    their choice forms: ``deceasedBoolean`` counts as ``deceased``); every
    parameter extracted one by one gives the same index."""
    from fhir_server.search.extract import extract_param

    registry = SearchRegistry.load().with_base_url("http://radhub.test/fhir")
    extra = [
        {"resourceType": "Patient", "deceasedBoolean": True, "multipleBirthInteger": 2},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "effectivePeriod": {"start": "2020"},
            "valueQuantity": {"value": 3, "unit": "mg"},
        },
    ]
    examples = [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))] + extra
    checked = 0
    for resource in examples:
        params = registry.params_for(resource.get("resourceType", ""))
        if not params:
            continue
        one_by_one = [
            entry
            for param in params.values()
            if not param.from_column
            for entry in extract_param(resource, param, registry.base_url)
        ]
        assert extract_index(resource, registry) == list(dict.fromkeys(one_by_one))
        checked += 1
    assert checked >= 20


def test_plain_paths_walk_as_the_interpreter_steps() -> None:
    """``evaluate`` walks plain child paths with ``_walk``; every branch of every
    expression of the registry gives, on every example resource and on nested
    and choice-typed elements, exactly the items the step interpreter gives."""
    from fhir_server.search.fhirpath import Item, _plan, _run, _walk, evaluate

    registry = SearchRegistry.load()
    made_up = [
        {"resourceType": "Observation", "valueQuantity": {"value": 1}, "effectiveDateTime": "2024"},
        {"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"family": "C"}, "odd"]},
        {"resourceType": "Patient", "contact": [{"name": {"family": "D"}}, {"telecom": []}]},
    ]
    resources = [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))] + made_up
    walked = 0
    for resource in resources:
        for param in registry.params_for(resource["resourceType"]).values():
            if param.from_column:
                continue
            root = [Item(resource, resource["resourceType"])]
            stepped: list[Item] = []
            for steps in _plan(param.expression, rooted=True):
                stepped += _run(root, steps)
                if steps and all(s.kind == "child" for s in steps):
                    names = tuple(s.name for s in steps)
                    assert _walk(names, resource) == _run(root, steps), param.expression
                    walked += 1
            assert evaluate(resource, param.expression) == stepped, param.expression
    assert walked > 500  # it ran over the many plain paths (631 when written), not a few
