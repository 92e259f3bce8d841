"""Validating a batch in a worker process gives the same verdicts as inline."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import InvalidResource, UnknownResourceType
from fhir_server.resources.validation_pool import INLINE_BELOW, ValidationPool


def batch() -> list[Any]:
    resources: list[Any] = [
        {"resourceType": "Patient", "name": [{"family": f"P{n}"}]} for n in range(INLINE_BELOW + 8)
    ]
    resources[3] = {"resourceType": "Patient", "name": "not a list of HumanName"}
    resources[17] = {"resourceType": "Specimen"}
    resources[30] = {"resourceType": "Patient", "unknownElement": True}
    return resources


@pytest.mark.parametrize("workers", [0, 1])
async def test_verdicts_per_resource(workers: int) -> None:
    pool = ValidationPool(workers)
    try:
        errors = await pool.validate_all(batch())
    finally:
        pool.close()
    failed = {i: type(e) for i, e in enumerate(errors) if e is not None}
    assert failed == {3: InvalidResource, 17: UnknownResourceType, 30: InvalidResource}
    invalid = errors[30]
    assert invalid is not None and any("unknownElement" in i.diagnostics for i in invalid.issues)
