"""The directly built AuditEvent index equals what generic extraction gives."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from fhir_server.access import AuthContext, ScopeSet
from fhir_server.audit import AuditRecord, to_audit_event
from fhir_server.audit_index import AUDIT_SEARCH_PARAMS, audit_index
from fhir_server.search.extract import extract_param
from fhir_server.search.registry import SearchRegistry

MOMENT = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
SYSTEM = AuthContext("svc", "billing", ScopeSet.parse("system/*.rs"))
PRACTITIONER = AuthContext("u1", "viewer", ScopeSet.parse("user/*.rs"), fhir_user="Practitioner/9")
PATIENT = AuthContext(
    "p-user", "portal", ScopeSet.parse("patient/*.rs"), patient="p1", fhir_user="Patient/p1"
)

CASES = {
    "anonymous refused": AuditRecord("read", 401, MOMENT, None, "Patient", "1"),
    "system read": AuditRecord("read", 200, MOMENT, SYSTEM, "Patient", "1", address="10.0.0.1"),
    "practitioner search": AuditRecord(
        "search-type", 200, MOMENT, PRACTITIONER, "ImagingStudy", query="status=available"
    ),
    "patient reads own report": AuditRecord("read", 200, MOMENT, PATIENT, "DiagnosticReport", "r"),
    "patient denied": AuditRecord("delete", 403, MOMENT, PATIENT, "Patient", "p2"),
    "server error": AuditRecord("transaction", 500, MOMENT, SYSTEM, description="boom"),
    "system history": AuditRecord("history-system", 200, MOMENT, SYSTEM),
}


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    return SearchRegistry.load()


@pytest.mark.parametrize("record", CASES.values(), ids=CASES.keys())
def test_direct_index_equals_generic_extraction(
    record: AuditRecord, registry: SearchRegistry
) -> None:
    event = to_audit_event(record)
    expected = Counter(
        entry
        for code in AUDIT_SEARCH_PARAMS
        for entry in extract_param(event, registry.param("AuditEvent", code))  # type: ignore[arg-type]
    )
    direct = Counter(audit_index(event, record.moment))
    assert direct == expected
    assert any(e.param == "date" for e in direct)
