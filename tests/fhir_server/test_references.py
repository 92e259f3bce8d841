"""Rewriting a transaction entry's references: placeholders, conditional
references (each resolved once), and what is left alone."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import InvalidRequest
from fhir_server.interactions.references import rewrite_references

MAPPING = {"urn:uuid:a": "Patient/1", "urn:uuid:b": "Practitioner/2"}
COND = "Patient?identifier=urn:mrn|7"


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"subject": {"reference": "urn:uuid:a"}}, {"subject": {"reference": "Patient/1"}}),
        (
            {"performer": [{"reference": "urn:uuid:b"}, {"reference": "Practitioner/9"}]},
            {"performer": [{"reference": "Practitioner/2"}, {"reference": "Practitioner/9"}]},
        ),
        # uri elements may carry a placeholder too
        ({"instantiatesUri": ["urn:uuid:a"]}, {"instantiatesUri": ["Patient/1"]}),
        ({"subject": {"reference": COND}}, {"subject": {"reference": "Patient/resolved"}}),
        # a conditional reference's text elsewhere is only text
        ({"note": [{"text": COND}]}, {"note": [{"text": COND}]}),
        (
            {"contained": [{"resourceType": "Basic", "subject": {"reference": "urn:uuid:a"}}]},
            {"contained": [{"resourceType": "Basic", "subject": {"reference": "Patient/1"}}]},
        ),
        ({"active": True, "count": 3}, {"active": True, "count": 3}),
    ],
)
async def test_rewrites(resource: dict[str, Any], expected: dict[str, Any]) -> None:
    async def resolve(reference: str) -> str:
        assert reference == COND
        return "Patient/resolved"

    assert await rewrite_references(resource, MAPPING, resolve) == expected


async def test_a_conditional_reference_is_resolved_once_however_often_it_appears() -> None:
    calls: list[str] = []

    async def resolve(reference: str) -> str:
        calls.append(reference)
        return "Patient/resolved"

    resource = {"subject": {"reference": COND}, "performer": [{"reference": COND}] * 3}
    out = await rewrite_references(resource, MAPPING, resolve)
    assert calls == [COND]
    assert out["performer"] == [{"reference": "Patient/resolved"}] * 3


async def test_a_placeholder_no_entry_defines_is_refused() -> None:
    async def resolve(reference: str) -> str:
        raise AssertionError("nothing to resolve")

    with pytest.raises(InvalidRequest, match="urn:uuid:zzz"):
        await rewrite_references({"subject": {"reference": "urn:uuid:zzz"}}, MAPPING, resolve)
