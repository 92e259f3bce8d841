"""Search conformance, table-driven, run identically on every adapter.

The corpus is the official R4 examples plus generated radiology data (some
resources later updated, some deleted), written through the ``Store`` port.
Each case is a type and a query string; the expected matches (in order, over
every page) and the includes of every page come from ``match.py``, the pure
oracle that shares no code with either backend. The cases are the hand-written
table of ``tests/search`` plus cases generated from the values the corpus holds
(every parameter that has values, with its modifiers and prefixes).
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import pytest_asyncio

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import SearchQuery
from fhir_server.search.extract import extract_index
from fhir_server.search.match import Indexed, include, search
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
from fhir_server.storage.base import NewVersion, SearchPage, Store
from fhir_server.storage.mongo.store import MongoStore
from fhir_server.storage.sqlite.store import SqliteStore

from ..search.conftest import example_resources, generated
from ..search.test_sqlite_search import CASES as TABLE_CASES
from .conftest import at, resource_version

REGISTRY = SearchRegistry.load()
PAGE = 10
_SPECIAL = set(",|$\\")


@dataclass
class Corpus:
    """What was written, as the oracle sees it."""

    docs: dict[tuple[str, str], Indexed]
    versions: list[list[NewVersion]]  # write batches, in order


def _build(seed: int = 11) -> Corpus:
    rng = random.Random(seed)
    resources = [r for r in example_resources() if REGISTRY.supports(r["resourceType"])]
    resources += list(generated(random.Random(seed), patients=60))
    docs: dict[tuple[str, str], Indexed] = {}
    first: list[NewVersion] = []
    later: list[NewVersion] = []
    for n, resource in enumerate(resources):
        key = (resource["resourceType"], resource["id"])
        v1 = resource_version(REGISTRY, resource, 1, at(n // 3))
        first.append(v1)
        fate = rng.random()
        final = v1
        if fate < 0.05:
            later.append(resource_version(REGISTRY, resource, 2, at(1000 + n), "delete"))
            continue
        if fate < 0.12:
            changed = _changed(resource, rng)
            final = resource_version(REGISTRY, changed, 2, at(1000 + n))
            later.append(final)
        body = json.loads(final.body or b"{}")
        docs[key] = Indexed(n + 1, key[0], key[1], _micros(final), tuple(final.index))
        assert tuple(extract_index(body, REGISTRY)) == tuple(final.index)
    return Corpus(docs, [first, later])


def _micros(version: NewVersion) -> int:
    delta = version.last_updated - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _changed(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """An update that changes what the resource is found by (re-indexing)."""
    changed = dict(resource)
    if "status" in changed:
        changed["status"] = rng.choice(["cancelled", "entered-in-error", "active", "final"])
    if "name" in changed and resource["resourceType"] == "Patient":
        changed["name"] = [{"family": "Renamed", "given": ["Zed"]}]
    changed.pop("identifier", None)
    return changed


CORPUS = _build()


# -- cases generated from the corpus --------------------------------------------------------


def _day(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).date().isoformat()


def _clean(*texts: str | None) -> bool:
    return all(t is not None and t and not (set(t) & _SPECIAL) for t in texts)


def _value_queries(code: str, value: object, rng: random.Random) -> Iterator[str]:
    """Query strings that search parameter ``code`` for (around) ``value``."""
    if isinstance(value, TokenValue) and _clean(value.code):
        yield urlencode({code: value.code})
        if _clean(value.system):
            yield urlencode({code: f"{value.system}|{value.code}"})
            yield urlencode({f"{code}:not": f"{value.system}|{value.code}"})
        elif value.system is None:
            yield urlencode({code: f"|{value.code}"})
        if value.text and _clean(value.text):
            yield urlencode({f"{code}:text": value.text[:4]})
    elif isinstance(value, StringValue) and _clean(value.normalized, value.exact):
        yield urlencode({code: value.normalized[:3]})
        yield urlencode({f"{code}:exact": value.exact})
        if len(value.normalized) > 3:
            yield urlencode({f"{code}:contains": value.normalized[1:3]})
    elif isinstance(value, DateRange) and value.low > 0:
        day = _day(value.low)
        prefix = rng.choice(["", "ge", "lt", "le", "gt", "ne", "sa", "eb", "ap"])
        yield urlencode({code: f"{prefix}{day}"})
        yield urlencode({code: day[:7]})
    elif isinstance(value, ReferenceValue) and _clean(value.type, value.id):
        yield urlencode({code: f"{value.type}/{value.id}"})
        yield urlencode({code: value.id})
    elif isinstance(value, QuantityValue | NumberValue):
        number = f"{value.value:g}"
        yield urlencode({code: number})
        yield urlencode({code: f"{rng.choice(['gt', 'le', 'ap'])}{number}"})
    elif isinstance(value, UriValue) and _clean(value.uri):
        yield urlencode({code: value.uri})


def generated_cases(seed: int = 5, per_param: int = 2) -> list[tuple[str | None, str]]:
    """Cases for every (type, parameter) the corpus has values for, plus :missing."""
    rng = random.Random(seed)
    by_param: dict[tuple[str, str], list[object]] = {}
    for doc in CORPUS.docs.values():
        for entry in doc.entries:
            if ":" not in entry.param and "$" not in entry.param:
                by_param.setdefault((doc.type, entry.param), []).append(entry.value)
    cases: list[tuple[str | None, str]] = []
    for (rtype, code), values in sorted(by_param.items(), key=lambda kv: kv[0]):
        param = REGISTRY.param(rtype, code)
        if param is None or param.type == "composite":
            continue
        for value in rng.sample(values, min(per_param, len(values))):
            cases += [(rtype, q) for q in _value_queries(code, value, rng)]
        cases.append((rtype, urlencode({f"{code}:missing": rng.choice(["true", "false"])})))
    return list(dict.fromkeys(cases))


GENERATED = generated_cases()
CASES = [(t, q) for t, q in TABLE_CASES] + GENERATED


# -- the adapters ---------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "mongo"])
async def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Store]:
    """The corpus written through the port of each adapter (read-only for the cases)."""
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp_path_factory.mktemp("conformance"), REGISTRY)
    else:
        from mongomock_motor import AsyncMongoMockClient

        store = MongoStore(AsyncMongoMockClient(), "conformance", REGISTRY)
    await store.start()
    for batch in CORPUS.versions:
        await store.write_many(batch)
    yield store
    await store.close()


def _query(resource_type: str | None, text: str) -> SearchQuery:
    params = parse_qsl(text, keep_blank_values=True)
    return parse_search(resource_type, params, REGISTRY, strict=True).query


async def _pages(store: Store, query: SearchQuery) -> list[SearchPage]:
    pages: list[SearchPage] = []
    while True:
        page = await store.search(query)
        pages.append(page)
        assert len(pages) < 500
        if page.next_cursor is None:
            return pages
        query = replace(query, cursor=page.next_cursor)


def _keys(versions: Any) -> list[tuple[str, str]]:
    return [(v.resource_type, v.id) for v in versions]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("resource_type", "text"), CASES, ids=[f"{t}?{q}" for t, q in CASES])
async def test_search_matches_oracle(loaded: Store, resource_type: str | None, text: str) -> None:
    try:
        query = replace(_query(resource_type, text), count=PAGE, total="accurate")
    except InvalidSearch:
        pytest.fail(f"the case does not parse: {resource_type}?{text}")
    expected = search(query, CORPUS.docs)
    pages = await _pages(loaded, query)
    assert _keys(m for p in pages for m in p.matches) == [(d.type, d.id) for d in expected]
    assert {p.total for p in pages} == {len(expected)}
    for page in pages:
        docs = [CORPUS.docs[k] for k in _keys(page.matches)]
        wanted = {(d.type, d.id) for d in include(query, docs, CORPUS.docs)}
        assert set(_keys(page.includes)) == wanted


def test_the_table_is_large_and_informative() -> None:
    """Hundreds of cases, most of them selecting some but not all resources of the type."""
    assert len(CASES) >= 400
    informative = 0
    for resource_type, text in CASES:
        query = _query(resource_type, text)
        found = len(search(query, CORPUS.docs))
        everything = len(search(SearchQuery(types=query.types), CORPUS.docs))
        informative += 0 < found < everything
    assert informative > len(CASES) * 0.6


def test_corpus_has_updates_and_deletions() -> None:
    written = {(v.resource_type, v.id) for v in CORPUS.versions[0]}
    deleted = {(v.resource_type, v.id) for v in CORPUS.versions[1] if v.method == "delete"}
    updated = [v for v in CORPUS.versions[1] if v.method == "update"]
    assert deleted and updated
    assert written - deleted == set(CORPUS.docs)
