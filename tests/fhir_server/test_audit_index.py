"""The directly built AuditEvent index equals what generic extraction gives for
every AuditEvent search parameter the server lists."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from fhir_server.access import AuthContext, ScopeSet
from fhir_server.audit import AuditLog, AuditRecord, to_audit_event
from fhir_server.audit_index import audit_index
from fhir_server.interactions.services import new_uuid
from fhir_server.search.extract import extract_param
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import NewVersion, StoredVersion
from fhir_server.storage.sqlite.store import SqliteStore

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
        for param in registry.params_for("AuditEvent").values()
        for entry in extract_param(event, param)
    )
    direct = Counter(audit_index(event, record.moment))
    assert direct == expected
    assert any(e.param == "date" for e in direct)


class CapturingStore(SqliteStore):
    """The real store, keeping what the audit log hands it."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, SearchRegistry.load())
        self.versions: list[NewVersion] = []

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        self.versions += versions
        return await super().write_many(versions)


async def test_the_log_writes_what_the_pure_functions_give(tmp_path: Path) -> None:
    """The log builds events from per-caller templates: every event and its index
    must still be exactly what ``to_audit_event`` and ``audit_index`` give, for
    callers, interactions, outcomes and addresses that repeat and interleave."""
    records = [*CASES.values(), *CASES.values()]
    records += [r._replace(address="10.9.9.9", resource_id="other") for r in CASES.values()]
    records += [r._replace(auth=replace(r.auth, subject="someone else")) for r in records if r.auth]
    store = CapturingStore(tmp_path)
    await store.start()
    log = AuditLog(store, new_uuid)
    try:
        for record in records:
            log.record(record)
        await log.flush()
    finally:
        await store.close()
    assert len(store.versions) == len(records)
    for record, version in zip(records, store.versions, strict=True):
        event = orjson.loads(version.body)
        assert event["id"] == version.id
        assert {k: v for k, v in event.items() if k not in ("id", "meta", "extension")} == (
            to_audit_event(record)
        )
        assert Counter(version.index) == Counter(audit_index(event, record.moment))
