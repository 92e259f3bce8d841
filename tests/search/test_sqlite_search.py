"""SQLite search compared with the pure oracle (match.py), case by case.

Each case is a type and a query string; both sides get the same parsed tree.
The SQL side pages through results (small pages, keyset cursors) and must give
the oracle's full ordered list, and the oracle's includes for every page.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import pytest

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.policy import compartment_filter
from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import And, Compare, Include, Node, Or, SearchQuery
from fhir_server.search.dates import parse_date_range
from fhir_server.search.extract import extract_index
from fhir_server.search.match import Indexed, include, search
from fhir_server.search.parse import parse_search
from fhir_server.search.values import ReferenceValue, TokenValue
from fhir_server.storage.sqlite.search_compile import band_of
from fhir_server.storage.sqlite.search_sql import (
    INDEX_DDL,
    delete_index,
    run_search,
    write_index,
)
from fhir_server.storage.sqlite.search_walk import walk_page

Loaded = Any  # conftest.Loaded: the corpus in SQLite and in the oracle
BASE_TIME = parse_date_range("2024-01-01T00:00:00Z").low  # type: ignore[union-attr]


def _query(loaded: Loaded, resource_type: str | None, text: str) -> SearchQuery:
    params = parse_qsl(text, keep_blank_values=True)
    return parse_search(resource_type, params, loaded.registry, strict=True).query


CASES: list[tuple[str | None, str]] = [
    # _id and _lastUpdated, from columns
    ("Patient", "_id=p1"),
    ("Patient", "_id=p1,p2,example,nope"),
    ("Patient", "_lastUpdated=ge2024-01-01T00:00:30Z"),
    ("Patient", "_lastUpdated=lt2024-01-01T00:00:30Z&_lastUpdated=gt2024-01-01T00:00:10Z"),
    ("Patient", "_lastUpdated=2024-01-01T00:00:12Z"),
    ("Patient", "_lastUpdated=ne2024-01-01T00:00:12Z"),
    ("Patient", "_lastUpdated=sa2024-01-01T00:00:50Z"),
    ("Patient", "_lastUpdated=eb2024-01-01T00:00:50Z"),
    ("Patient", "_lastUpdated=le2024-01-01T00:00:50Z"),
    ("Patient", "_lastUpdated=2024-01-01"),
    ("Patient", "_lastUpdated=ap2024-01-01T00:01"),
    ("ImagingStudy", "_sort=-_lastUpdated"),
    ("ImagingStudy", "_sort=_id"),
    ("ImagingStudy", "_sort=-_id"),
    # strings: prefix, accents, case, exact, contains
    ("Patient", "name=smi"),
    ("Patient", "name=SMI"),
    ("Patient", "name=muller"),
    ("Patient", "name=Müller"),
    ("Patient", "name:exact=Müller"),
    ("Patient", "name:exact=muller"),
    ("Patient", "name:contains=ll"),
    ("Patient", "family=garc"),
    ("Patient", "given=asa"),
    ("Patient", "given=ZOE"),
    ("Patient", "given=chloe"),
    ("Patient", "family=nguyen"),
    ("Patient", "family=o'b"),
    ("Patient", "family=van d"),
    ("Patient", "name=smi,dup"),
    ("Patient", "name=smi&given=anna"),
    ("Patient", "address=amster"),
    ("Patient", "address-city=amsterdam"),
    ("Patient", "name=zzz"),
    # tokens
    ("Patient", "identifier=urn:mrn|MRN0003"),
    ("Patient", "identifier=MRN0003"),
    ("Patient", "identifier=urn:mrn|"),
    ("Patient", "identifier=|MRN0003"),
    ("Patient", "identifier=urn:other|MRN0003"),
    ("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|654321"),
    ("Patient", "gender=male"),
    ("Patient", "gender=male,female"),
    ("Patient", "gender:not=male"),
    ("Patient", "gender:not=male,female"),
    ("Patient", "active=true"),
    ("Patient", "active=false"),
    ("Patient", "deceased=true"),
    ("Patient", "deceased=false"),
    ("Patient", "phone=555-0004"),
    ("Patient", "telecom=555-0004"),
    ("Patient", "_tag=urn:tags|vip"),
    ("Patient", "_tag:not=urn:tags|vip"),
    ("ServiceRequest", "identifier=urn:acc|ACCsr3-0"),
    (
        "ServiceRequest",
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|ACCsr3-0",
    ),
    ("ServiceRequest", "status=active"),
    ("ServiceRequest", "status=active&priority=stat"),
    ("ServiceRequest", "code=http://loinc.org|24627-2"),
    ("ServiceRequest", "code=24627-2,36643-5"),
    ("ImagingStudy", "status=available"),
    ("ImagingStudy", "modality=CT"),
    ("ImagingStudy", "modality=CT,MR&status=available"),
    ("ImagingStudy", "identifier=urn:dicom:uid|urn:oid:1.2.3.4.0"),
    ("ImagingStudy", "series=1.2.3.4.0.1"),
    ("DiagnosticReport", "status=final"),
    ("DiagnosticReport", "category=urn:cat|RAD"),
    ("DiagnosticReport", "code:text=diagnostic imag"),
    ("DiagnosticReport", "category:text=radio"),
    ("DiagnosticReport", "code=http://loinc.org|"),
    ("Observation", "code=http://loinc.org|29463-7"),
    ("Observation", "code:text=BODY"),
    ("Appointment", "status=booked"),
    ("Appointment", "appointment-type=WALKIN"),
    ("Slot", "status=free"),
    # dates at every precision and prefix
    ("Patient", "birthdate=1980"),
    ("Patient", "birthdate=1975-06"),
    ("Patient", "birthdate=ge1980"),
    ("Patient", "birthdate=gt1980"),
    ("Patient", "birthdate=le1980"),
    ("Patient", "birthdate=lt1980"),
    ("Patient", "birthdate=ne1980"),
    ("Patient", "birthdate=sa1980"),
    ("Patient", "birthdate=eb1980"),
    ("Patient", "birthdate=ap1980-06-15"),
    ("Patient", "birthdate=1980-06-15"),
    ("Patient", "birthdate=ge1970&birthdate=lt1990"),
    ("ImagingStudy", "started=2023-05"),
    ("ImagingStudy", "started=ge2023-06-01&started=lt2023-07-01"),
    ("ImagingStudy", "started=gt2023-06-01T10:00:00Z"),
    ("ImagingStudy", "started=lt2023-06-01T10:00:00%2B01:00"),
    ("ImagingStudy", "started=eq2011-01-01T11:01:20%2B03:00"),
    ("ImagingStudy", "started=2011-01-01T08:01:20.000Z"),
    ("DiagnosticReport", "date=2023"),
    ("DiagnosticReport", "date=ge2023-06"),
    ("DiagnosticReport", "date=le2023-06"),
    ("DiagnosticReport", "date=ap2023-06"),
    ("DiagnosticReport", "date=sa2023-03-01"),
    ("DiagnosticReport", "date=eb2023-09-01"),
    ("ServiceRequest", "authored=ge2023-10-15"),
    ("DiagnosticReport", "date=ge2023-03-01&date=lt2023-09-01&_sort=-date"),
    ("DiagnosticReport", "date=gt2023-01&date=le2023-06&status=final"),
    ("ServiceRequest", "occurrence=ge2013&occurrence=lt2014"),
    ("Patient", "birthdate=sa1970&birthdate=eb1990-06&_sort=birthdate"),
    ("Appointment", "date=2013-12-10"),
    ("Observation", "date=2016-03-28"),
    # numbers and quantities
    ("Observation", "value-quantity=185"),
    ("Observation", "value-quantity=gt80"),
    ("Observation", "value-quantity=lt60|http://unitsofmeasure.org|kg"),
    ("Observation", "value-quantity=ge80||kg"),
    ("Observation", "value-quantity=le100||lbs"),
    ("Observation", "value-quantity=ap100"),
    ("Observation", "value-quantity=ne185"),
    ("Observation", "value-quantity=80.5"),
    ("Observation", "value-quantity=sa70&value-quantity=eb90"),
    ("Observation", "combo-value-quantity=gt60"),
    ("Observation", "code-value-quantity=http://loinc.org|29463-7$gt80"),
    (
        "Observation",
        "code-value-quantity=http://loinc.org|29463-7$lt80|http://unitsofmeasure.org|kg",
    ),
    ("Observation", "code-value-quantity=http://loinc.org|3141-9$185"),
    ("Observation", "code-value-quantity=http://loinc.org|3141-9$gt200"),
    # references
    ("ImagingStudy", "patient=p1"),
    ("ImagingStudy", "patient=Patient/p1"),
    ("ImagingStudy", "subject=Patient/p1"),
    ("ImagingStudy", "subject:Patient=p1"),
    ("ImagingStudy", "subject=p1,p2,p3"),
    ("ImagingStudy", "basedon=ServiceRequest/sr1-0"),
    ("ImagingStudy", "basedon=ServiceRequest/example"),
    ("ImagingStudy", "patient=dicom"),
    ("ImagingStudy", "basedon:identifier=urn:acc|ACCsr1-0"),
    ("DiagnosticReport", "patient=Patient/p2&status=final"),
    ("DiagnosticReport", "subject:missing=true"),
    ("DiagnosticReport", "subject:missing=false"),
    ("DiagnosticReport", "based-on:missing=true"),
    ("ImagingStudy", "started:missing=true"),
    ("Patient", "birthdate:missing=true"),
    ("Patient", "telecom:missing=false"),
    ("Patient", "general-practitioner=Organization/1"),
    ("Patient", "organization=Organization/1"),
    ("Patient", "link=Patient/pat2"),
    ("Appointment", "actor=Patient/example"),
    ("Appointment", "practitioner=example"),
    ("Appointment", "slot=Slot/example"),
    ("Observation", "subject=Patient/example"),
    ("Observation", "patient=example"),
    # uri
    ("Endpoint", "_profile=http://example.org"),
    ("Patient", "_source:below=http://example"),
    # chains
    ("ImagingStudy", "subject:Patient.name=smi"),
    ("ImagingStudy", "patient.identifier=urn:mrn|MRN0001"),
    ("ImagingStudy", "subject:Patient.identifier=MRN0001,MRN0002"),
    ("ImagingStudy", "basedon:ServiceRequest.status=active"),
    ("ImagingStudy", "basedon.status=active"),
    ("ImagingStudy", "basedon:ServiceRequest.identifier=urn:acc|ACCsr2-0"),
    ("ImagingStudy", "basedon:ServiceRequest.subject:Patient.gender=female"),
    ("ImagingStudy", "status=available&basedon:ServiceRequest.status=active&_sort=-started"),
    ("DiagnosticReport", "subject:Patient.birthdate=ge1980&status=final"),
    ("DiagnosticReport", "based-on:ServiceRequest.priority=stat"),
    ("Appointment", "patient.name=peter"),
    ("Patient", "organization.name=gastro"),
    # reverse chains
    ("Patient", "_has:ImagingStudy:patient:status=available"),
    ("Patient", "_has:ServiceRequest:subject:status=active"),
    (
        "Patient",
        "_has:ServiceRequest:subject:status=active&_has:DiagnosticReport:subject:status=final",
    ),
    ("Patient", "_has:ImagingStudy:subject:modality=CT,MR"),
    ("ServiceRequest", "_has:ImagingStudy:basedon:status=cancelled"),
    ("Patient", "_has:ServiceRequest:subject:_has:ImagingStudy:basedon:modality=US"),
    ("Patient", "_has:Observation:subject:value-quantity=gt100"),
    # sort
    ("Patient", "_sort=family"),
    ("Patient", "_sort=-family,given"),
    ("Patient", "_sort=birthdate"),
    ("Patient", "_sort=-birthdate"),
    ("Patient", "_sort=gender,-_lastUpdated"),
    ("ImagingStudy", "_sort=-started"),
    ("ImagingStudy", "_sort=started,_id"),
    ("ImagingStudy", "_sort=subject,-started"),
    ("ServiceRequest", "_sort=priority,-authored"),
    ("Observation", "_sort=-value-quantity"),
    ("DiagnosticReport", "_sort=date&status=final"),
    # escaping
    ("Patient", "family=van\\,dijk"),
    ("Patient", "identifier=urn:mrn|MRN\\|0003"),
    # system level
    (None, "_type=Patient,ImagingStudy&_id=p1,st1-0"),
    (None, "_lastUpdated=ge2024-01-01T00:01:00Z&_count=100"),
    (None, "_type=Patient,Practitioner&identifier=urn:mrn|MRN0001"),
    (None, "_tag=urn:tags|vip"),
    # includes
    ("ImagingStudy", "_include=ImagingStudy:subject"),
    ("ImagingStudy", "_include=ImagingStudy:patient&status=available"),
    ("ImagingStudy", "_include=ImagingStudy:basedon:ServiceRequest&_include=ImagingStudy:subject"),
    ("ImagingStudy", "_include=ImagingStudy:*"),
    ("ImagingStudy", "_include=*"),
    ("Patient", "_revinclude=ImagingStudy:subject&name=smi"),
    ("Patient", "_revinclude=ServiceRequest:subject&_revinclude=DiagnosticReport:patient"),
    ("Patient", "_revinclude=ServiceRequest:subject&_revinclude:iterate=ImagingStudy:basedon"),
    (
        "DiagnosticReport",
        "_include=DiagnosticReport:based-on&_include:iterate=ServiceRequest:subject",
    ),
    ("ServiceRequest", "_revinclude=ImagingStudy:*&status=active"),
    ("Appointment", "_include=Appointment:actor&_include:iterate=PractitionerRole:practitioner"),
    ("Patient", "_revinclude:iterate=Patient:link&_id=pat1"),
]


def _ids(rows: list[Any]) -> list[tuple[str, str]]:
    return [(r.resource_type, r.id) for r in rows]


def _all_pages(loaded: Loaded, query: SearchQuery) -> list[Any]:
    """Every page (following next cursors), each checked against the oracle's includes."""
    pages: list[Any] = []
    seen = 0
    while True:
        page = run_search(loaded.conn, query, loaded.registry)
        pages.append(page)
        seen += len(page.matches)
        assert seen < 10_000
        if page.next_cursor is None:
            return pages
        query = replace(query, cursor=page.next_cursor)


@pytest.mark.parametrize(("resource_type", "text"), CASES, ids=[f"{t}?{q}" for t, q in CASES])
def test_matches_oracle(loaded: Loaded, resource_type: str | None, text: str) -> None:
    query = replace(_query(loaded, resource_type, text), count=7)
    expected = search(query, loaded.corpus)
    pages = _all_pages(loaded, query)
    got = [m for page in pages for m in page.matches]
    assert _ids(got) == [(d.type, d.id) for d in expected]
    for page in pages:
        docs = [loaded.corpus[(m.resource_type, m.id)] for m in page.matches]
        wanted = {(d.type, d.id) for d in include(query, docs, loaded.corpus)}
        assert set(_ids(page.includes)) == wanted
        assert not set(_ids(page.includes)) & set(_ids(page.matches))


def test_cases_are_not_trivial(loaded: Loaded) -> None:
    """Most cases select something and not everything, so they can tell right from wrong."""
    informative = 0
    for resource_type, text in CASES:
        query = _query(loaded, resource_type, text)
        found = len(search(query, loaded.corpus))
        everything = len(search(SearchQuery(types=query.types), loaded.corpus))
        informative += 0 < found < everything
    assert informative > len(CASES) * 0.6


def test_backward_paging_mirrors_forward(loaded: Loaded) -> None:
    query = _query(loaded, "ImagingStudy", "_sort=-started,_id&_count=5")
    pages = _all_pages(loaded, query)
    assert len(pages) > 3
    back = pages[-1]
    walked = [_ids(back.matches)]
    while back.previous_cursor is not None:
        back = run_search(loaded.conn, replace(query, cursor=back.previous_cursor), loaded.registry)
        walked.append(_ids(back.matches))
    assert list(reversed(walked)) == [_ids(p.matches) for p in pages]


def test_total_modes(loaded: Loaded) -> None:
    query = _query(loaded, "Patient", "gender=male&_total=accurate&_count=2")
    page = run_search(loaded.conn, query, loaded.registry)
    assert page.total == len(search(query, loaded.corpus)) > 2
    assert len(page.matches) == 2
    none = run_search(loaded.conn, replace(query, total="none"), loaded.registry)
    assert none.total is None
    count_only = run_search(loaded.conn, replace(query, count=0), loaded.registry)
    assert count_only.matches == [] and count_only.total == page.total


def test_deleted_never_match(loaded: Loaded) -> None:
    deleted = {
        (t, i) for t, i in loaded.conn.execute("SELECT type, id FROM resources WHERE deleted = 1")
    }
    assert deleted
    query = SearchQuery(types=tuple(loaded.registry.types), count=1000)
    got = set(_ids(run_search(loaded.conn, query, loaded.registry).matches))
    assert got and not got & deleted


def test_stored_version_fields(loaded: Loaded) -> None:
    patient_id = next(i for t, i in loaded.corpus if t == "Patient" and i.startswith("p"))
    query = _query(loaded, "Patient", f"_id={patient_id}")
    (match,) = run_search(loaded.conn, query, loaded.registry).matches
    row = loaded.conn.execute(
        "SELECT version, last_updated FROM resources WHERE type='Patient' AND id=?", (patient_id,)
    ).fetchone()
    assert match.version == row[0]
    assert match.method == ("update" if row[0] > 1 else "create")
    assert match.last_updated.tzinfo is not None
    assert int(match.last_updated.timestamp()) * 1_000_000 == row[1] - row[1] % 1_000_000
    assert match.body is not None and f'"id": "{patient_id}"'.encode() in match.body


def test_keyset_paging_survives_inserts(fresh: Callable[[int], Loaded]) -> None:
    data = fresh(3)
    query = SearchQuery(types=("Patient",), count=4)
    first = run_search(data.conn, query, data.registry)
    # A resource written before the cursor position does not shift the next page.
    data.conn.execute(
        "INSERT INTO resources(type, id, version, last_updated, deleted, body)"
        " VALUES ('Patient', 'early', 1, ?, 0, x'7b7d')",
        (BASE_TIME - 10,),
    )
    second = run_search(data.conn, replace(query, cursor=first.next_cursor), data.registry)
    ordered = [d.id for d in search(query, data.corpus)]
    assert [m.id for m in second.matches] == ordered[4:8]


def test_reindex_replaces_rows(fresh: Callable[[int], Loaded]) -> None:
    data = fresh(5)
    pk = data.corpus[("Patient", "p1")].pk
    write_index(data.conn, pk, "Patient", [])
    query = _query(data, "Patient", "identifier=urn:mrn|MRN0001")
    assert run_search(data.conn, query, data.registry).matches == []
    delete_index(data.conn, pk)
    counts = [
        data.conn.execute(f"SELECT count(*) FROM {t} WHERE pk = ?", (pk,)).fetchone()[0]
        for t in ("search_string", "search_token", "search_reference")
    ]
    assert counts == [0, 0, 0]


@pytest.mark.parametrize(
    "cursor", ["not-base64!", "eyJ4IjogMX0", "WyJuIiwgImZhbWlseSIsIFsxLCAyXV0"]
)
def test_bad_cursor_is_invalid_search(loaded: Loaded, cursor: str) -> None:
    query = SearchQuery(types=("Patient",), cursor=cursor)
    with pytest.raises(InvalidSearch):
        run_search(loaded.conn, query, loaded.registry)


def test_cursor_bound_to_sort(loaded: Loaded) -> None:
    query = _query(loaded, "Patient", "_sort=family&_count=2")
    page = run_search(loaded.conn, query, loaded.registry)
    other = replace(query, sort=(), cursor=page.next_cursor)
    with pytest.raises(InvalidSearch):
        run_search(loaded.conn, other, loaded.registry)


def test_include_guard_limits_includes(loaded: Loaded) -> None:
    query = _query(
        loaded, "ImagingStudy", "_include=ImagingStudy:subject&_include=ImagingStudy:basedon"
    )
    guard = Compare("_type", "token", TokenValue(None, "ServiceRequest"))
    guarded = replace(query, include_where=guard, count=200)
    page = run_search(loaded.conn, guarded, loaded.registry)
    assert page.includes and {m.resource_type for m in page.includes} == {"ServiceRequest"}
    docs = [loaded.corpus[(m.resource_type, m.id)] for m in page.matches]
    assert set(_ids(page.includes)) == {
        (d.type, d.id) for d in include(guarded, docs, loaded.corpus)
    }


# --- every key search is served by an index -------------------------------------------

PLAN_CASES = [
    ("Patient", "identifier=urn:mrn|MRN0003"),
    ("Patient", "name=smi"),
    ("Patient", "_id=p1"),
    ("Patient", "_lastUpdated=ge2024-01-01T00:00:30Z"),
    ("ImagingStudy", "patient=Patient/p1&_include=ImagingStudy:subject"),
    (
        "ImagingStudy",
        "status=available&basedon:ServiceRequest.status=active&_sort=-started"
        "&_include=ImagingStudy:patient",
    ),
    ("DiagnosticReport", "patient=Patient/p2&status=final"),
    ("ServiceRequest", "identifier=urn:acc|ACCsr3-0"),
    ("ImagingStudy", "subject:Patient.identifier=urn:mrn|MRN0001"),
    ("Patient", "_id=p1&_revinclude=ImagingStudy:subject"),
    ("ImagingStudy", "started=ge2023-06-01&started=lt2023-07-01"),
    ("Patient", "_has:ServiceRequest:subject:status=active&name=smi"),
    ("ImagingStudy", "modality=CT,MR"),
]

_FULL_SCAN = re.compile(r"\bSCAN (?!\(|CONSTANT)(\w+)")
# An index used only on the type (or type and parameter) walks every row of it:
# a full scan in disguise at a million resources.
_TYPE_WALK = re.compile(r"INDEX \w+ \((ref_)?type=\?( AND param=\?)?\)$", re.MULTILINE)


class _Recorder:
    """Forwards to a connection, keeping every statement run."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        self.statements.append((sql, tuple(args)))
        return self.conn.execute(sql, args)


@pytest.mark.parametrize(("resource_type", "text"), PLAN_CASES, ids=[q for _, q in PLAN_CASES])
def test_key_searches_use_indexes(loaded: Loaded, resource_type: str, text: str) -> None:
    recorder = _Recorder(loaded.conn)
    query = replace(_query(loaded, resource_type, text), total="accurate")
    run_search(recorder, query, loaded.registry)  # type: ignore[arg-type]
    assert recorder.statements
    for sql, args in recorder.statements:
        plan = loaded.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()
        details = "\n".join(row[3] for row in plan)
        assert not _FULL_SCAN.search(details), f"{sql}\n{details}"
        assert not _TYPE_WALK.search(details), f"{sql}\n{details}"


def test_plan_check_detects_a_scan(loaded: Loaded) -> None:
    plan = loaded.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM resources r WHERE r.body = 1")
    assert _FULL_SCAN.search("\n".join(row[3] for row in plan.fetchall()))
    sql = "EXPLAIN QUERY PLAN SELECT * FROM resources r WHERE r.type = 'Patient' AND r.body = 1"
    plan = loaded.conn.execute(sql)
    assert _TYPE_WALK.search("\n".join(row[3] for row in plan.fetchall()))


def _plan_details(loaded: Loaded, query: SearchQuery, probe_limit: int = 500) -> list[str]:
    recorder = _Recorder(loaded.conn)
    query = replace(query, total="accurate")
    run_search(recorder, query, loaded.registry, probe_limit=probe_limit)  # type: ignore[arg-type]
    assert recorder.statements
    return [
        "\n".join(row[3] for row in loaded.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        for sql, args in recorder.statements
    ]


def _everything_query(loaded: Loaded, patient_id: str) -> SearchQuery:
    """The query ``$everything`` runs: one ``_type`` branch per compartment type."""
    compartment = PatientCompartment.load()
    types = tuple(t for t in loaded.registry.types if compartment.contains_type(t))
    branches: list[Node] = []
    for t in types:
        member = compartment_filter(compartment, t, patient_id)
        assert member is not None
        branches.append(And((Compare("_type", "token", TokenValue(None, t)), member)))
    includes = tuple(Include(t, "*") for t in types)
    return SearchQuery(types=types, where=Or(tuple(branches)), includes=includes, count=7)


def test_everything_uses_indexes_and_matches_oracle(loaded: Loaded) -> None:
    studied = {
        e.value.id for (t, _), d in loaded.corpus.items() if t == "ImagingStudy"
        for e in d.entries if e.param == "subject" and isinstance(e.value, ReferenceValue)
    }  # fmt: skip
    patient = min(i for t, i in loaded.corpus if t == "Patient" and i in studied)
    query = _everything_query(loaded, patient)
    for details in _plan_details(loaded, query):
        assert not _FULL_SCAN.search(details), details
        assert not _TYPE_WALK.search(details), details
    expected = search(query, loaded.corpus)
    assert {d.type for d in expected} >= {"Patient", "ImagingStudy", "ServiceRequest"}
    got = [m for page in _all_pages(loaded, query) for m in page.matches]
    assert _ids(got) == [(d.type, d.id) for d in expected]


def test_worklist_plan_uses_indexes(loaded: Loaded) -> None:
    text = (
        "status=available&basedon:ServiceRequest.status=active&_sort=-started"
        "&_include=ImagingStudy:patient"
    )
    query = replace(_query(loaded, "ImagingStudy", text), count=1)
    for details in _plan_details(loaded, query):
        assert not _FULL_SCAN.search(details), details
        assert not _TYPE_WALK.search(details), details
    # Unselective (forced by a probe limit of 1): the page walks the index of the
    # sort key in order, checking rows through the (pk, param) indexes, and stops
    # at the page size (no sort of every match).
    (walk,) = [d for d in _plan_details(loaded, query, probe_limit=1) if "search_date_high" in d]
    assert walk.startswith("SEARCH s USING COVERING INDEX search_date_high"), walk
    assert not _FULL_SCAN.search(walk) and "TEMP B-TREE FOR ORDER BY" not in walk, walk
    assert "search_token_pk" in walk and "search_reference_pk" in walk, walk


@pytest.mark.parametrize(("resource_type", "text"), CASES, ids=[f"{t}?{q}" for t, q in CASES])
def test_index_walk_matches_oracle(loaded: Loaded, resource_type: str | None, text: str) -> None:
    """The sort-index walk (taken for unselective searches; here forced with a probe
    limit of 1) gives every page the general plan gives."""
    query = replace(_query(loaded, resource_type, text), count=7)
    expected = [(d.type, d.id) for d in search(query, loaded.corpus)]
    got: list[tuple[str, str]] = []
    while True:
        page = run_search(loaded.conn, query, loaded.registry, probe_limit=1)
        got += _ids(page.matches)
        if page.next_cursor is None:
            break
        query = replace(query, cursor=page.next_cursor)
    assert got == expected


def test_index_walk_is_taken_for_unselective_searches(loaded: Loaded) -> None:
    walked = [
        (t, q)
        for t, q in CASES
        if walk_page(loaded.conn, _query(loaded, t, q), loaded.registry, probe_limit=1)
    ]
    assert len(walked) > 40
    assert ("ImagingStudy", "modality=CT,MR&status=available") in walked
    # a selective lookup keeps the general plan
    selective = _query(loaded, "Patient", "identifier=urn:mrn|MRN0003&gender=male")
    assert walk_page(loaded.conn, selective, loaded.registry) is None


# --- date bands: a range driven from both ends --------------------------------------

BAND_CASES = [
    ("Patient", "birthdate=1980"),
    ("Patient", "birthdate=ap1980-06-15"),
    ("Patient", "birthdate=ge1970&birthdate=lt1990"),
    ("Patient", "birthdate=sa1970&birthdate=eb1990-06&_sort=birthdate"),
    ("ImagingStudy", "started=ge2023-06-01&started=lt2023-07-01"),
    ("ImagingStudy", "started=ge2023-06-01&started=lt2023-07-01&_sort=-started&status=available"),
    ("DiagnosticReport", "date=ap2023-06"),
    ("DiagnosticReport", "date=ge2023-03-01&date=lt2023-09-01&_sort=-date"),
    ("DiagnosticReport", "date=gt2023-01&date=le2023-06&status=final"),
    ("DiagnosticReport", "date=ge2023&date=ne2023-06-15&date=lt2024&_sort=date"),
    ("ServiceRequest", "occurrence=ge2013&occurrence=lt2014"),
    ("ServiceRequest", "authored=ge2023-10-15&authored=lt2023-11-16T12:00:00Z"),
    ("Observation", "date=ge2016-03&date=le2016-03"),
]


def _pages_by_band(loaded: Loaded, query: SearchQuery) -> list[tuple[str, str]]:
    """Every page, the band forced to drive (no lookup counts as selective)."""
    got: list[tuple[str, str]] = []
    while True:
        page = run_search(loaded.conn, query, loaded.registry, probe_limit=1, band_limit=10**9)
        got += _ids(page.matches)
        if page.next_cursor is None:
            return got
        query = replace(query, cursor=page.next_cursor)


@pytest.mark.parametrize(
    ("resource_type", "text"), BAND_CASES, ids=[f"{t}?{q}" for t, q in BAND_CASES]
)
def test_band_driver_matches_oracle(loaded: Loaded, resource_type: str, text: str) -> None:
    query = replace(_query(loaded, resource_type, text), count=7)
    assert query.where is not None
    assert band_of(query.where.parts if isinstance(query.where, And) else (query.where,))
    expected = [(d.type, d.id) for d in search(query, loaded.corpus)]
    assert _pages_by_band(loaded, query) == expected


def test_band_cases_cover_the_prefixes() -> None:
    joined = "&".join(q for _, q in BAND_CASES)
    for prefix in ("ge", "gt", "lt", "le", "sa", "eb", "ap"):
        assert f"={prefix}" in joined, prefix


def test_band_plan_bounds_low_on_both_sides(loaded: Loaded) -> None:
    for text in (
        "started=ge2023-06-01&started=lt2023-07-01",
        "date=ge2023-03-01&date=lt2023-09-01&_sort=-date",
    ):
        rtype = "ImagingStudy" if text.startswith("started") else "DiagnosticReport"
        query = _query(loaded, rtype, text)
        plans = _plan_details(loaded, query)
        driving = [d for d in plans if "search_date_band" in d]
        assert driving, plans
        for details in plans:
            assert not _FULL_SCAN.search(details), details
            assert not _TYPE_WALK.search(details), details
        # one two-sided range per bounded width class (and no one-sided lookup)
        assert driving[-1].count("AND low>? AND low<?)") == 6, driving[-1]
        assert "search_date_low" not in driving[-1] and "search_date_high" not in driving[-1]


def _add(data: Loaded, resource: dict[str, Any]) -> None:
    entries = extract_index(resource, data.registry)
    cursor = data.conn.execute(
        "INSERT INTO resources(type, id, version, last_updated, deleted, body)"
        " VALUES (?, ?, 1, ?, 0, x'7b7d')",
        (resource["resourceType"], resource["id"], BASE_TIME),
    )
    pk = int(cursor.lastrowid or 0)
    write_index(data.conn, pk, resource["resourceType"], entries)
    key = (resource["resourceType"], resource["id"])
    data.corpus[key] = Indexed(pk, key[0], key[1], BASE_TIME, tuple(entries))


def _encounter(eid: str, *periods: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"code": "AMB"},
        "location": [
            {"location": {"reference": "Location/l1"}, "period": {"start": a, "end": b}}
            for a, b in periods
        ],
    }


def test_band_finds_resources_matching_through_two_values(fresh: Callable[[int], Loaded]) -> None:
    """``ge`` met by one value and ``lt`` by another: no single row lies in the band."""
    data = fresh(9)
    _add(data, _encounter("two", ("2020-01-01", "2020-02-01"), ("2020-06-01", "2020-07-01")))
    _add(data, _encounter("inside", ("2020-03-10", "2020-03-12")))
    _add(data, _encounter("before", ("2020-01-01", "2020-02-01")))
    _add(data, _encounter("wide", ("2019-01-01", "2021-01-01")))
    marked = data.conn.execute(
        "SELECT DISTINCT grp FROM search_date WHERE param = ?", ("location-period",)
    )
    assert sorted(g for (g,) in marked) == [-1, 0]
    for text in (
        "location-period=ge2020-03-01&location-period=lt2020-04-01",
        "location-period=ap2020-03-11",
        "location-period=gt2020-02-15&location-period=le2020-05",
    ):
        query = _query(data, "Encounter", text)
        expected = [(d.type, d.id) for d in search(query, data.corpus)]
        assert expected, text
        assert _pages_by_band(data, query) == expected, text
        assert _ids(run_search(data.conn, query, data.registry).matches) == expected, text
    assert ("Encounter", "two") in [
        (d.type, d.id)
        for d in search(
            _query(data, "Encounter", "location-period=ge2020-03-01&location-period=lt2020-04-01"),
            data.corpus,
        )
    ]


def test_start_marks_multi_valued_dates_of_older_stores(fresh: Callable[[int], Loaded]) -> None:
    """A store indexed before width classes had ``grp`` 0 on every plain value: the
    DDL run at start marks the values of multi-valued date parameters, once."""
    data = fresh(11)
    _add(data, _encounter("two", ("2020-01-01", "2020-02-01"), ("2020-06-01", "2020-07-01")))
    conn = data.conn
    conn.execute("UPDATE search_date SET grp = 0 WHERE grp < 0")
    conn.execute("DELETE FROM search_schema")
    for ddl in INDEX_DDL:
        conn.execute(ddl)
    rows = conn.execute("SELECT param, grp FROM search_date WHERE grp < 0").fetchall()
    assert rows == [("location-period", -1), ("location-period", -1)]
    # done once: later starts leave the rows alone
    conn.execute("UPDATE search_date SET grp = 0 WHERE grp < 0")
    for ddl in INDEX_DDL:
        conn.execute(ddl)
    assert conn.execute("SELECT count(*) FROM search_date WHERE grp < 0").fetchone()[0] == 0
