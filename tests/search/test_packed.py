"""Index entries packed as tuples (``search.packed``) come back as the same
entries, travel between processes without their classes, and give the SQLite
adapter the rows the entries stand for."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import pytest

from fhir_server.search.extract import extract_index, extract_packed
from fhir_server.search.packed import (
    VALUE_TYPES,
    PackedIndex,
    pack_entries,
    pack_value,
    unpack_value,
)
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
)
from fhir_server.storage.sqlite.search_compile import MULTI_GRP
from fhir_server.storage.sqlite.search_sql import index_rows
from tests.conftest import EXAMPLES

REGISTRY = SearchRegistry.load()

VALUES: list[Value] = [
    StringValue("smith", "Smith"),
    TokenValue("urn:mrn", "12", None),
    TokenValue(None, "final", "Final"),
    TokenValue("", "x"),
    DateRange(1_700_000_000_000_000, 1_700_000_086_400_000),
    NumberValue(100.0, 99.5, 100.5),
    QuantityValue(5.4, 5.35, 5.45, "http://unitsofmeasure.org", "mg", "milligram"),
    ReferenceValue("Patient", "p1"),
    ReferenceValue(None, None, "http://elsewhere.test/fhir/Patient/9", "2"),
    UriValue("http://example.org/fhir/ValueSet/x"),
    CompositeValue(
        (TokenValue("http://loinc.org", "8480-6"), QuantityValue(120, 119.5, 120.5, None, None))
    ),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_a_value_comes_back_equal_and_of_its_type(value: Value) -> None:
    packed = pack_value(value)
    assert VALUE_TYPES[packed[0]] is type(value)
    back = unpack_value(packed)
    assert back == value
    assert type(back) is type(value)


def _example_indexes() -> list[tuple[str, list[IndexEntry]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource: dict[str, Any] = orjson.loads(path.read_bytes())
        if resource.get("resourceType") in REGISTRY.types:
            out.append((path.name, extract_index(resource, REGISTRY)))
    return out


EXAMPLE_INDEXES = _example_indexes()


def test_the_cases_cover_every_kind_of_value() -> None:
    assert {type(v) for v in VALUES} == set(VALUE_TYPES)
    # the examples add real indexes, composites (Observation's code-value-*) among them
    kinds = {type(e.value) for _, entries in EXAMPLE_INDEXES for e in entries}
    assert {CompositeValue, QuantityValue, ReferenceValue, DateRange} <= kinds


@pytest.mark.parametrize(("name", "entries"), EXAMPLE_INDEXES, ids=[n for n, _ in EXAMPLE_INDEXES])
def test_an_example_index_comes_back_whole_after_the_trip(
    name: str, entries: list[IndexEntry]
) -> None:
    index = PackedIndex.of(entries)
    travelled = pickle.loads(pickle.dumps(index))
    assert isinstance(travelled, PackedIndex)
    assert len(travelled) == len(entries)
    assert list(travelled) == entries
    assert travelled == entries and travelled == index
    assert [travelled[i] for i in range(len(entries))] == entries


def test_extracting_packed_gives_the_entries_in_their_order_without_duplicates() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        resource: dict[str, Any] = orjson.loads(path.read_bytes())
        if resource.get("resourceType") not in REGISTRY.types:
            continue
        # a repeated identifier gives the same entries twice: kept once
        doubled = {**resource, "identifier": [*resource.get("identifier", [])] * 2}
        for r in (resource, doubled):
            packed = extract_packed(r, REGISTRY)
            assert list(packed) == extract_index(r, REGISTRY), path.name
            assert len(set(packed.packed)) == len(packed), path.name


def test_the_trip_carries_no_value_objects() -> None:
    entries = [IndexEntry("v", v) for v in VALUES]
    wire = pickle.dumps(PackedIndex.of(entries))
    for cls in (*VALUE_TYPES, IndexEntry):
        assert cls.__name__.encode() not in wire
    # as objects, each class is named on the wire
    assert b"TokenValue" in pickle.dumps(entries)


def test_packing_a_packed_index_returns_its_tuples() -> None:
    index = PackedIndex.of([IndexEntry("a", VALUES[0])])
    assert pack_entries(index) is index.packed


def test_a_packed_index_is_not_hashable_like_the_list_it_stands_for() -> None:
    with pytest.raises(TypeError):
        hash(PackedIndex(()))


# -- the SQLite rows made from packed entries -------------------------------------------

ROWS = [
    (StringValue("smith", "Smith"), "search_string", ("smith", "Smith")),
    (TokenValue("urn:mrn", "12", "t"), "search_token", ("urn:mrn", "12", "t")),
    (DateRange(1, 2), "search_date", (1, 2)),
    (NumberValue(100.0, 99.5, 100.5), "search_number", (100.0,)),
    (
        QuantityValue(5.4, 5.35, 5.45, "http://unitsofmeasure.org", "mg", "milligram"),
        "search_quantity",
        (5.4, "http://unitsofmeasure.org", "mg", "milligram"),
    ),
    (ReferenceValue("Patient", "p1", None, "3"), "search_reference", ("Patient", "p1", None, "3")),
    (UriValue("urn:x"), "search_uri", ("urn:x",)),
]


@pytest.mark.parametrize(("value", "table", "columns"), ROWS, ids=[t for _, t, _ in ROWS])
@pytest.mark.parametrize("packed", [False, True], ids=["entries", "packed"])
def test_a_value_becomes_one_row_of_its_table(
    value: Value, table: str, columns: tuple[object, ...], packed: bool
) -> None:
    entries: list[IndexEntry] = [IndexEntry("p", value)]
    given = PackedIndex.of(entries) if packed else entries
    assert index_rows(7, "Observation", given) == {table: [(7, "Observation", "p", 0, *columns)]}


@pytest.mark.parametrize("packed", [False, True], ids=["entries", "packed"])
def test_composites_are_grouped_and_repeated_dates_marked(packed: bool) -> None:
    systolic = CompositeValue((TokenValue("http://loinc.org", "8480-6"), NumberValue(1, 0.5, 1.5)))
    diastolic = CompositeValue((TokenValue("http://loinc.org", "8462-4"), NumberValue(2, 1.5, 2.5)))
    entries = [
        IndexEntry("_id", TokenValue(None, "x")),  # a column of its own: no row
        IndexEntry("cv", systolic),
        IndexEntry("cv", diastolic),
        IndexEntry("date", DateRange(1, 2)),
        IndexEntry("date", DateRange(5, 6)),
        IndexEntry("issued", DateRange(3, 4)),
    ]
    rows = index_rows(3, "Observation", PackedIndex.of(entries) if packed else entries)
    assert rows == {
        "search_token": [
            (3, "Observation", "cv$0", 1, "http://loinc.org", "8480-6", None),
            (3, "Observation", "cv$0", 2, "http://loinc.org", "8462-4", None),
        ],
        "search_number": [(3, "Observation", "cv$1", 1, 1), (3, "Observation", "cv$1", 2, 2)],
        "search_date": [
            (3, "Observation", "date", MULTI_GRP, 1, 2),
            (3, "Observation", "date", MULTI_GRP, 5, 6),
            (3, "Observation", "issued", 0, 3, 4),
        ],
    }


@pytest.mark.parametrize("packed", [False, True], ids=["entries", "packed"])
def test_a_nested_composite_part_has_no_row(packed: bool) -> None:
    # R4 defines none; a part that is itself composite has no table of its own
    nested = CompositeValue((TokenValue("s", "c"), CompositeValue((UriValue("urn:x"),))))
    entries = [IndexEntry("cv", nested)]
    rows = index_rows(1, "Observation", PackedIndex.of(entries) if packed else entries)
    assert rows == {"search_token": [(1, "Observation", "cv$0", 1, "s", "c", None)]}
