"""Query parameters -> SearchQuery: the tree, values, control parameters, errors."""

from __future__ import annotations

import pytest

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import (
    And,
    Chain,
    Compare,
    Composite,
    Has,
    Include,
    Missing,
    Node,
    Not,
    Or,
    SortKey,
)
from fhir_server.search.dates import parse_date_range
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.values import (
    DateRange,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    return SearchRegistry.load()


def _where(registry: SearchRegistry, resource_type: str, name: str, value: str) -> Node | None:
    return parse_search(resource_type, [(name, value)], registry, strict=True).query.where


def _day(text: str) -> DateRange:
    found = parse_date_range(text)
    assert found is not None
    return found


WHERE_CASES: list[tuple[str, str, str, Node]] = [
    ("Patient", "_id", "a", Compare("_id", "token", TokenValue(None, "a"))),
    ("Patient", "name", "Müller", Compare("name", "string", StringValue("muller", "Müller"))),
    (
        "Patient",
        "name:exact",
        "Müller",
        Compare("name", "string", StringValue("muller", "Müller"), modifier="exact"),
    ),
    (
        "Patient",
        "name:contains",
        "ll",
        Compare("name", "string", StringValue("ll", "ll"), modifier="contains"),
    ),
    ("Patient", "identifier", "s|v", Compare("identifier", "token", TokenValue("s", "v"))),
    ("Patient", "identifier", "|v", Compare("identifier", "token", TokenValue("", "v"))),
    ("Patient", "identifier", "s|", Compare("identifier", "token", TokenValue("s", None))),
    ("Patient", "identifier", "a\\|b", Compare("identifier", "token", TokenValue(None, "a|b"))),
    (
        "Patient",
        "identifier:of-type",
        "http://t|MR|123",
        Compare("identifier", "token", TokenValue("http://t", "MR", "123"), modifier="of-type"),
    ),
    ("Patient", "gender:not", "male", Not(Compare("gender", "token", TokenValue(None, "male")))),
    (
        "Patient",
        "gender",
        "male,female",
        Or(
            (
                Compare("gender", "token", TokenValue(None, "male")),
                Compare("gender", "token", TokenValue(None, "female")),
            )
        ),
    ),
    ("Patient", "family", "a\\,b", Compare("family", "string", StringValue("a,b", "a,b"))),
    ("Patient", "family", "a\\\\b", Compare("family", "string", StringValue("a\\b", "a\\b"))),
    (
        "DiagnosticReport",
        "code:text",
        "Héad CT",
        Compare("code", "token", TokenValue(None, None, "head ct"), modifier="text"),
    ),
    ("Patient", "birthdate", "1980", Compare("birthdate", "date", _day("1980"))),
    ("Patient", "birthdate", "ge1980-02", Compare("birthdate", "date", _day("1980-02"), "ge")),
    (
        "Patient",
        "birthdate",
        "sa1980-02-03",
        Compare("birthdate", "date", _day("1980-02-03"), "sa"),
    ),
    (
        "Patient",
        "birthdate",
        "ap1980-02-03",
        Compare(
            "birthdate",
            "date",
            DateRange(
                _day("1980-02-03").low - 8_640_000_000, _day("1980-02-03").high + 8_640_000_000
            ),
            "ap",
        ),
    ),
    (
        "Observation",
        "value-quantity",
        "5.4|http://unitsofmeasure.org|mg",
        Compare(
            "value-quantity",
            "quantity",
            QuantityValue(5.4, 5.35, 5.45, "http://unitsofmeasure.org", "mg"),
        ),
    ),
    (
        "Observation",
        "value-quantity",
        "gt100||mg",
        Compare("value-quantity", "quantity", QuantityValue(100.0, 99.5, 100.5, None, "mg"), "gt"),
    ),
    (
        "Encounter",
        "length",
        "le1e2",
        Compare("length", "quantity", QuantityValue(100.0, 50.0, 150.0, None, None), "le"),
    ),
    (
        "ImagingStudy",
        "patient",
        "123",
        Compare("patient", "reference", ReferenceValue(None, "123")),
    ),
    (
        "ImagingStudy",
        "patient",
        "Patient/123",
        Compare("patient", "reference", ReferenceValue("Patient", "123")),
    ),
    (
        "ImagingStudy",
        "subject:Patient",
        "123",
        Compare("subject", "reference", ReferenceValue("Patient", "123"), modifier="Patient"),
    ),
    (
        "ImagingStudy",
        "subject",
        "http://x.org/fhir/Patient/1",
        Compare("subject", "reference", ReferenceValue(None, None, "http://x.org/fhir/Patient/1")),
    ),
    (
        "ImagingStudy",
        "basedon:identifier",
        "urn:acc|A1",
        Compare("basedon", "reference", TokenValue("urn:acc", "A1"), modifier="identifier"),
    ),
    ("ImagingStudy", "started:missing", "true", Missing("started", True)),
    (
        "Patient",
        "_profile:below",
        "http://a/",
        Compare("_profile", "uri", UriValue("http://a/"), modifier="below"),
    ),
    (
        "ImagingStudy",
        "subject:Patient.name",
        "smi",
        Chain("subject", "Patient", Compare("name", "string", StringValue("smi", "smi"))),
    ),
    (
        "ImagingStudy",
        "basedon:ServiceRequest.subject:Patient.identifier",
        "x",
        Chain(
            "basedon",
            "ServiceRequest",
            Chain("subject", "Patient", Compare("identifier", "token", TokenValue(None, "x"))),
        ),
    ),
    (
        "ImagingStudy",
        "patient.gender",
        "male",
        Chain("patient", "Patient", Compare("gender", "token", TokenValue(None, "male"))),
    ),
    (
        "Patient",
        "_has:ServiceRequest:subject:status",
        "active",
        Has("ServiceRequest", "subject", Compare("status", "token", TokenValue(None, "active"))),
    ),
    (
        "Patient",
        "_has:ServiceRequest:subject:_has:ImagingStudy:basedon:modality",
        "CT",
        Has(
            "ServiceRequest",
            "subject",
            Has("ImagingStudy", "basedon", Compare("modality", "token", TokenValue(None, "CT"))),
        ),
    ),
    (
        "Observation",
        "code-value-quantity",
        "http://loinc.org|1$gt5",
        Composite(
            "code-value-quantity",
            (
                Compare("code-value-quantity$0", "token", TokenValue("http://loinc.org", "1")),
                Compare(
                    "code-value-quantity$1",
                    "quantity",
                    QuantityValue(5.0, 4.5, 5.5, None, None),
                    "gt",
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "name", "value", "expected"),
    WHERE_CASES,
    ids=[f"{t}?{n}={v}" for t, n, v, _ in WHERE_CASES],
)
def test_where(
    registry: SearchRegistry, resource_type: str, name: str, value: str, expected: Node
) -> None:
    assert _where(registry, resource_type, name, value) == expected


def test_and_by_repeat(registry: SearchRegistry) -> None:
    params = [("birthdate", "ge1980"), ("birthdate", "lt1990"), ("gender", "male")]
    where = parse_search("Patient", params, registry, strict=True).query.where
    assert isinstance(where, And) and len(where.parts) == 3


def test_number_precision() -> None:
    from fhir_server.search.parse_values import parse_number

    assert parse_number("n", "100", "eq") == NumberValue(100.0, 99.5, 100.5)
    assert parse_number("n", "100.00", "eq") == NumberValue(100.0, 99.995, 100.005)
    ap = parse_number("n", "100", "ap")
    assert (ap.low, ap.high) == pytest.approx((90.0, 110.0))


MALFORMED = [
    ("Patient", "birthdate", "1980-13"),
    ("Patient", "birthdate", "xx1980"),
    ("Patient", "birthdate", "ge"),
    ("Observation", "value-quantity", "abc"),
    ("Observation", "value-quantity", "1|2"),
    ("Patient", "identifier", "|"),
    ("Patient", "identifier", ""),
    ("Patient", "identifier", "a|b|c"),
    ("Patient", "identifier:of-type", "a|b"),
    ("Patient", "name:nonsense", "x"),
    ("Patient", "birthdate:exact", "1980"),
    ("Patient", "gender:missing", "maybe"),
    ("ImagingStudy", "subject", "not a ref!"),
    ("ImagingStudy", "subject:Patient", "Practitioner/1"),
    ("ImagingStudy", "subject:Nonsense", "1"),
    ("Observation", "code-value-quantity", "http://loinc.org|1"),
    ("Patient", "_count", "-1"),
    ("Patient", "_count", "ten"),
    ("Patient", "_total", "all"),
    ("Patient", "_include", "Patient"),
    ("Patient", "_include:deep", "Patient:link"),
    ("Patient", "_has:Observation", "x"),
]


@pytest.mark.parametrize(("resource_type", "name", "value"), MALFORMED)
def test_malformed_is_invalid(
    registry: SearchRegistry, resource_type: str, name: str, value: str
) -> None:
    for strict in (True, False):
        with pytest.raises(InvalidSearch):
            parse_search(resource_type, [(name, value)], registry, strict=strict)


UNKNOWN = [
    ("Patient", "nonsense", "1"),
    ("Patient", "code", "1"),
    ("Patient", "_text", "cancer"),
    ("Patient", "_content", "x"),
    ("Patient", "_list", "l1"),
    ("ImagingStudy", "subject:Patient.nonsense", "1"),
    ("Patient", "_has:Nonsense:subject:status", "x"),
    ("Patient", "_has:Observation:nonsense:status", "x"),
    ("Patient", "_sort", "nonsense"),
    ("Patient", "_include", "Patient:nonsense"),
    ("Patient", "_include", "Nonsense:subject"),
]


@pytest.mark.parametrize(("resource_type", "name", "value"), UNKNOWN)
def test_unknown_is_warning_or_strict_error(
    registry: SearchRegistry, resource_type: str, name: str, value: str
) -> None:
    parsed = parse_search(resource_type, [(name, value), ("_id", "a")], registry, strict=False)
    assert len(parsed.issues) == 1
    assert parsed.issues[0].severity == "warning"
    assert parsed.query.where == Compare("_id", "token", TokenValue(None, "a"))
    with pytest.raises(InvalidSearch):
        parse_search(resource_type, [(name, value)], registry, strict=True)


def test_control_params(registry: SearchRegistry) -> None:
    params = [
        ("_sort", "-birthdate,family"),
        ("_count", "5000"),
        ("_total", "accurate"),
        ("_summary", "count"),
        ("_elements", "id,name"),
        ("_format", "json"),
        ("_pretty", "true"),
        ("_cursor", "abc"),
        ("_include", "Patient:organization"),
        ("_revinclude:iterate", "ImagingStudy:subject:Patient"),
        ("_include", "Patient:organization"),
    ]
    parsed = parse_search("Patient", params, registry, strict=True)
    query = parsed.query
    assert query.sort == (SortKey("birthdate", True), SortKey("family"))
    assert query.count == 1000
    assert query.total == "accurate"
    assert query.cursor == "abc"
    assert query.where is None
    assert query.includes == (
        Include("Patient", "organization"),
        Include("ImagingStudy", "subject", "Patient", iterate=True, reverse=True),
    )
    assert dict(parsed.result_params) == {
        "_summary": "count",
        "_elements": "id,name",
        "_format": "json",
        "_pretty": "true",
    }
    assert parsed.issues == ()


def test_include_star(registry: SearchRegistry) -> None:
    query = parse_search("ImagingStudy", [("_include", "*")], registry, strict=True).query
    assert query.includes == (Include("ImagingStudy", "*"),)


def test_system_level(registry: SearchRegistry) -> None:
    parsed = parse_search(
        None, [("_type", "Patient,ImagingStudy"), ("_id", "1")], registry, strict=True
    )
    assert parsed.query.types == ("Patient", "ImagingStudy")
    everything = parse_search(None, [("_lastUpdated", "ge2024")], registry, strict=True)
    assert set(everything.query.types) == set(registry.types)
    with pytest.raises(InvalidSearch):
        parse_search(None, [("_type", "Nonsense")], registry, strict=True)
    # "name" is not common to Patient and ImagingStudy.
    lenient = parse_search(
        None, [("_type", "Patient,ImagingStudy"), ("name", "x")], registry, strict=False
    )
    assert lenient.query.where is None and len(lenient.issues) == 1


def test_unsupported_type(registry: SearchRegistry) -> None:
    with pytest.raises(InvalidSearch):
        parse_search("Nonsense", [], registry, strict=False)


def test_untyped_chain_follows_every_target(registry: SearchRegistry) -> None:
    where = _where(registry, "Appointment", "actor.name", "x")
    assert isinstance(where, Or)
    assert {p.target_type for p in where.parts if isinstance(p, Chain)} >= {
        "Patient",
        "Practitioner",
        "Location",
    }
