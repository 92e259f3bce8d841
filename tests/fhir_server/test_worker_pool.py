"""Preparing a batch (validation and index extraction) in worker processes gives
the same verdicts and the same index as inline, resource by resource."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.errors import InvalidResource, UnknownResourceType
from fhir_server.resources.meta import stamp
from fhir_server.resources.worker_pool import (
    CHUNK,
    FIRST_CHUNK,
    INLINE_BELOW,
    WorkerPool,
    chunk_starts,
)
from fhir_server.search.extract import extract_index
from fhir_server.search.registry import SearchRegistry
from tests.conftest import EXAMPLES

REGISTRY = SearchRegistry.load().with_base_url("http://radhub.test/fhir")


def batch(size: int) -> list[Any]:
    resources: list[Any] = [
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": str(n)}],
            "name": [{"family": f"Family{n}", "given": ["Ann"]}],
            "generalPractitioner": [{"reference": "http://radhub.test/fhir/Practitioner/9"}],
        }
        for n in range(size)
    ]
    resources[3] = {"resourceType": "Patient", "name": "not a list of HumanName"}
    resources[17] = {"resourceType": "Specimen"}
    resources[size - 2] = {"resourceType": "Patient", "unknownElement": True}
    return resources


@pytest.mark.parametrize(
    ("workers", "size"), [(0, INLINE_BELOW + 8), (1, INLINE_BELOW - 1), (1, 2 * CHUNK + 7)]
)
async def test_verdicts_and_index_per_resource(workers: int, size: int) -> None:
    resources = batch(size)
    pool = WorkerPool(workers)
    try:
        chunks = pool.prepare(resources, REGISTRY)
        results = [await chunks.get(n) for n in range(size)]
    finally:
        pool.close()
    failed = {n: type(e) for n, (e, _) in enumerate(results) if e is not None}
    assert failed == {3: InvalidResource, 17: UnknownResourceType, size - 2: InvalidResource}
    invalid = results[size - 2][0]
    assert invalid is not None and any("unknownElement" in i.diagnostics for i in invalid.issues)
    for n, (error, index) in enumerate(results):
        expected = None if error is not None else extract_index(resources[n], REGISTRY)
        assert index == expected, n
    # the absolute reference to this server was made relative, in the worker too
    entries = results[0][1] or []
    assert any(e.param == "general-practitioner" and e.value.id == "9" for e in entries)  # type: ignore[union-attr]


def _examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        if resource.get("resourceType") in REGISTRY.types:
            found.append(resource)
    return found


def test_stamping_does_not_change_the_index() -> None:
    """What lets the index be extracted before the server stamps id and meta."""
    examples = _examples()
    assert len(examples) > 20
    moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    for resource in examples:
        stamped = stamp(resource, "another-id", 7, moment)
        assert extract_index(resource, REGISTRY) == extract_index(stamped, REGISTRY)


@pytest.mark.parametrize(
    ("total", "starts"),
    [
        (0, []),
        (1, [0]),
        (FIRST_CHUNK, [0]),
        (FIRST_CHUNK + 1, [0, FIRST_CHUNK]),
        (500, [0, 8, 24, 56, 120, 184, 248, 312, 376, 440]),
    ],
)
def test_chunks_start_small_then_grow_to_the_full_size(total: int, starts: list[int]) -> None:
    assert FIRST_CHUNK == 8 and CHUNK == 64
    assert chunk_starts(total) == starts


async def test_warm_starts_the_workers_before_the_first_batch() -> None:
    pool = WorkerPool(1)
    try:
        assert pool.pids() == []
        pool.warm(REGISTRY)
        (pid,) = pool.pids()
        assert Path(f"/proc/{pid}").exists()  # a worker process exists before any batch
        chunks = pool.prepare(batch(INLINE_BELOW + 1), REGISTRY)
        error, index = await chunks.get(0)
        assert error is None and index
    finally:
        pool.close()


async def test_workers_import_the_preload_modules_as_they_start() -> None:
    """Work handed to ``run`` (DICOM parsing) should not wait for its imports."""
    plain, preloading = WorkerPool(1), WorkerPool(1, preload=["dicomweb.records"])
    try:
        # a builtin, not a function of this module: unpickling one of these in the
        # worker would import this module, and with it what it imports
        imported = "'dicomweb.records' in __import__('sys').modules"
        assert not await plain.run(eval, imported)
        assert await preloading.run(eval, imported)
    finally:
        plain.close()
        preloading.close()
