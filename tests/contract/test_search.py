"""Store contract: search by the parsed expression tree, with paging, total and includes."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.search.ast import SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import SearchPage, Store

from .conftest import at, resource_version
from .test_versions import write

MRN = "urn:oid:1.2.3.4"
LOINC = "http://loinc.org"

PATIENTS: list[dict[str, Any]] = [
    {"id": "p1", "name": [{"family": "Müller", "given": ["Anna"]}], "gender": "female",
     "birthDate": "1980-05-01", "identifier": [{"system": MRN, "value": "111"}]},
    {"id": "p2", "name": [{"family": "Muller"}], "gender": "male", "birthDate": "1975-01-10",
     "identifier": [{"system": MRN, "value": "222"}]},
    {"id": "p3", "name": [{"family": "Smith"}], "gender": "female", "birthDate": "1990-12-31"},
    {"id": "p4", "name": [{"family": "Smyth"}], "gender": "other"},
    {"id": "p5", "name": [{"family": "Gone"}], "gender": "female", "birthDate": "1985-03-03"},
]  # fmt: skip

OBSERVATIONS: list[tuple[str, str, str, str]] = [
    ("o1", "p1", "2023-05-02T10:00:00Z", "1234-5"),
    ("o2", "p1", "2023-06-01T10:00:00Z", "9999-9"),
    ("o3", "p3", "2023-05-20T08:30:00Z", "1234-5"),
]


def observation(id: str, subject: str, when: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when,
    }


@pytest.fixture
async def loaded(store: Store, registry: SearchRegistry) -> Store:
    """Patients p1..p5 written at t=1..5 (p5 then deleted), observations at t=11..13."""
    for i, p in enumerate(PATIENTS, start=1):
        await write(store, resource_version(registry, {"resourceType": "Patient", **p}, 1, at(i)))
    for i, args in enumerate(OBSERVATIONS, start=11):
        await write(store, resource_version(registry, observation(*args), 1, at(i)))
    await write(store, resource_version(registry, {"resourceType": "Patient", "id": "p5"}, 2,
                                        at(20), "delete"))  # fmt: skip
    return store


def query(registry: SearchRegistry, type: str, **params: str) -> SearchQuery:
    pairs = [(k.replace("__", ":").replace("_dot_", "."), v) for k, v in params.items()]
    return parse_search(type, pairs, registry, strict=True).query


async def ids(store: Store, q: SearchQuery) -> list[str]:
    return [v.id for v in (await store.search(q)).matches]


CASES: list[tuple[str, dict[str, str], list[str]]] = [
    ("Patient", {}, ["p1", "p2", "p3", "p4"]),
    ("Patient", {"_id": "p2,p5,p3,nope"}, ["p2", "p3"]),
    ("Patient", {"_lastUpdated": "ge2024-01-01T00:00:02Z"}, ["p2", "p3", "p4"]),
    ("Patient", {"_lastUpdated": "lt2024-01-01T00:00:03Z"}, ["p1", "p2"]),
    ("Patient", {"gender": "female"}, ["p1", "p3"]),
    ("Patient", {"gender__not": "female"}, ["p2", "p4"]),
    ("Patient", {"identifier": f"{MRN}|222"}, ["p2"]),
    ("Patient", {"identifier": "111"}, ["p1"]),
    ("Patient", {"identifier": "other|111"}, []),
    ("Patient", {"name": "mul"}, ["p1", "p2"]),
    ("Patient", {"name": "MÜLLER"}, ["p1", "p2"]),
    ("Patient", {"name__exact": "Müller"}, ["p1"]),
    ("Patient", {"name": "sm,ann"}, ["p1", "p3", "p4"]),
    ("Patient", {"birthdate": "ge1980"}, ["p1", "p3"]),
    ("Patient", {"birthdate": "lt1980-05-02"}, ["p1", "p2"]),
    ("Patient", {"birthdate__missing": "true"}, ["p4"]),
    ("Observation", {"subject": "Patient/p1"}, ["o1", "o2"]),
    ("Observation", {"subject": "p3"}, ["o3"]),
    ("Observation", {"date": "2023-05"}, ["o1", "o3"]),
    ("Observation", {"code": f"{LOINC}|1234-5", "date": "ge2023-05-10"}, ["o3"]),
    ("Observation", {"subject_dot_name": "smith"}, ["o3"]),
    ("Observation", {"subject__Patient_dot_gender": "female"}, ["o1", "o2", "o3"]),
    ("Patient", {"_has__Observation__subject__code": "9999-9"}, ["p1"]),
    ("Patient", {"_has__Observation__subject__code": "1234-5"}, ["p1", "p3"]),
    ("Patient", {"_sort": "-birthdate"}, ["p3", "p1", "p2", "p4"]),
    ("Patient", {"_sort": "birthdate"}, ["p2", "p1", "p3", "p4"]),
    ("Patient", {"_sort": "-_id"}, ["p4", "p3", "p2", "p1"]),
    ("Patient", {"_sort": "gender,-_lastUpdated"}, ["p3", "p1", "p2", "p4"]),
]


@pytest.mark.parametrize(("type", "params", "expected"), CASES, ids=[str(c[1]) for c in CASES])
async def test_search_cases(
    loaded: Store, registry: SearchRegistry, type: str, params: dict[str, str], expected: list[str]
) -> None:
    assert await ids(loaded, query(registry, type, **params)) == expected


async def _pages(store: Store, q: SearchQuery) -> list[SearchPage]:
    pages = [await store.search(q)]
    while pages[-1].next_cursor is not None:
        following = SearchQuery(**{**_fields(q), "cursor": pages[-1].next_cursor})
        pages.append(await store.search(following))
        assert len(pages) < 10
    return pages


def _fields(q: SearchQuery) -> dict[str, Any]:
    return {name: getattr(q, name) for name in q.__dataclass_fields__}


@pytest.mark.parametrize("sort", ["", "-birthdate", "_id", "gender,-_lastUpdated"])
async def test_paging_and_total(loaded: Store, registry: SearchRegistry, sort: str) -> None:
    params = {"_count": "2", "_total": "accurate", **({"_sort": sort} if sort else {})}
    q = query(registry, "Patient", **params)
    everything = await ids(loaded, query(registry, "Patient", **({"_sort": sort} if sort else {})))
    pages = await _pages(loaded, q)
    assert [len(p.matches) for p in pages] == [2, 2]
    assert [v.id for p in pages for v in p.matches] == everything
    assert all(p.total == 4 for p in pages)
    assert pages[0].previous_cursor is None
    back = pages[1].previous_cursor
    assert back is not None
    again = await loaded.search(SearchQuery(**{**_fields(q), "cursor": back}))
    assert [v.id for v in again.matches] == [v.id for v in pages[0].matches]


async def test_total_none_and_count_zero(loaded: Store, registry: SearchRegistry) -> None:
    page = await loaded.search(query(registry, "Patient", gender="female"))
    assert page.total is None
    counted = await loaded.search(query(registry, "Patient", gender="female", _total="accurate",
                                        _count="0"))  # fmt: skip
    assert counted.matches == [] and counted.total == 2


async def test_matches_are_current_versions(loaded: Store, registry: SearchRegistry) -> None:
    page = await loaded.search(query(registry, "Patient", _id="p3"))
    (match,) = page.matches
    assert (match.resource_type, match.version, match.last_updated) == ("Patient", 1, at(3))
    assert match.body is not None and b'"Smith"' in match.body


async def test_include_and_revinclude(loaded: Store, registry: SearchRegistry) -> None:
    forward = await loaded.search(
        query(registry, "Observation", code="1234-5", _include="Observation:subject")
    )
    assert sorted(v.id for v in forward.matches) == ["o1", "o3"]
    assert sorted(v.id for v in forward.includes) == ["p1", "p3"]
    reverse = await loaded.search(
        query(registry, "Patient", _id="p1", _revinclude="Observation:subject")
    )
    assert [v.id for v in reverse.matches] == ["p1"]
    assert sorted(v.id for v in reverse.includes) == ["o1", "o2"]
