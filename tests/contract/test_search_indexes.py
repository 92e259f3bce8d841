"""Every key search is served by an index on MongoDB: checked with ``explain()``
on a real server (``RADHUB_TEST_MONGODB_URI``); the emulator has no query planner,
so without a server these tests are skipped.

The SQLite counterpart (``EXPLAIN QUERY PLAN``) is in ``tests/search``.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.policy import compartment_filter
from fhir_server.search.ast import And, Compare, Node, Or, SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.values import TokenValue
from fhir_server.storage.mongo.documents import RESOURCES
from fhir_server.storage.mongo.search_compile import Compiler
from fhir_server.storage.mongo.search_paging import sort_fields, sort_spec
from fhir_server.storage.mongo.store import MongoStore

from ..search.conftest import generated
from .conftest import MONGODB_URI_ENV, at, resource_version

REGISTRY = SearchRegistry.load()

KEY_SEARCHES = [
    ("Patient", "identifier=urn:mrn|MRN0003"),
    ("Patient", "name=smi"),
    ("ImagingStudy", "patient=Patient/p1"),
    ("ImagingStudy", "status=available&basedon:ServiceRequest.status=active&_sort=-started"),
    ("DiagnosticReport", "patient=Patient/p2&status=final"),
    ("ServiceRequest", "identifier=urn:acc|ACCsr3-0"),
    ("ImagingStudy", "subject:Patient.identifier=urn:mrn|MRN0001"),
    ("Patient", "_has:ServiceRequest:subject:status=active&name=smi"),
    ("ImagingStudy", "started=ge2023-06-01&started=lt2023-07-01"),
    ("DiagnosticReport", "date=ge2023-06-01&_sort=-date"),
]


@pytest.fixture
async def mongo() -> AsyncIterator[MongoStore]:
    uri = os.environ.get(MONGODB_URI_ENV)
    if not uri:
        pytest.skip(f"{MONGODB_URI_ENV} is not set: explain() needs a real MongoDB server")
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    name = f"radhub_explain_{uuid.uuid4().hex[:12]}"
    store = MongoStore(client, name, REGISTRY)
    await store.start()

    resources = list(generated(random.Random(3), patients=300))
    await store.write_many(
        [resource_version(REGISTRY, r, 1, at(n)) for n, r in enumerate(resources)]
    )
    yield store
    await client.drop_database(name)
    await client.close()


def _stages(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "stage" in plan:
            yield str(plan["stage"])
        for value in plan.values():
            yield from _stages(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _stages(item)


async def _explain(store: MongoStore, query: SearchQuery) -> list[str]:
    db = store._db
    where = await Compiler(db, REGISTRY).matching(query.types, query.where)
    spec = sort_spec(sort_fields(query, REGISTRY), True)
    cursor = db[RESOURCES].find(where).sort(spec).limit(51)
    explained = await cursor.explain()
    return list(_stages(explained["queryPlanner"]["winningPlan"]))


@pytest.mark.parametrize(("resource_type", "text"), KEY_SEARCHES, ids=[q for _, q in KEY_SEARCHES])
async def test_key_searches_use_indexes(mongo: MongoStore, resource_type: str, text: str) -> None:
    params = parse_qsl(text, keep_blank_values=True)
    query = parse_search(resource_type, params, REGISTRY, strict=True).query
    stages = await _explain(mongo, query)
    assert "COLLSCAN" not in stages, stages
    assert "IXSCAN" in stages, stages


async def test_everything_uses_indexes(mongo: MongoStore) -> None:
    compartment = PatientCompartment.load()
    types = tuple(t for t in REGISTRY.types if compartment.contains_type(t))
    branches: list[Node] = []
    for t in types:
        member = compartment_filter(compartment, t, "p1")
        assert member is not None
        branches.append(And((Compare("_type", "token", TokenValue(None, t)), member)))
    stages = await _explain(mongo, SearchQuery(types=types, where=Or(tuple(branches))))
    assert "COLLSCAN" not in stages, stages


async def test_worklist_sort_is_walked_not_sorted(mongo: MongoStore) -> None:
    query = parse_search("ImagingStudy", [("_sort", "-started")], REGISTRY, strict=True).query
    stages = await _explain(mongo, query)
    assert "SORT" not in stages and "COLLSCAN" not in stages, stages
