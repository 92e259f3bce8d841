"""The audit trail's hash chain: each AuditEvent carries the SHA-256 of the one
written before it, so a record changed or removed afterwards is detected.

The link is an extension on the AuditEvent (``CHAIN_URL``, ``valueString``
holding the hex digest of the previous event; the first holds ``GENESIS``).
An event's digest is taken over its canonical JSON (sorted keys), so storage
re-serialisation does not matter. ``verify_chain`` walks the stored history
newest to oldest: every link must equal the digest of the event before it,
every event must have exactly one version, and the oldest must link to
``GENESIS``. It cannot see the newest records being cut off the end: the
report's count and head digest are what to record elsewhere to catch that.

One writer per chain: the audit log of one process. Several instances on one
MongoDB database would each fork the chain (documented in the README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_server.storage.base import HistoryQuery, Store

CHAIN_URL = "https://radhub.dev/fhir/StructureDefinition/audit-chain-previous"
GENESIS = "0" * 64
_PAGE = 500


def event_hash(event: Mapping[str, Any]) -> str:
    """The digest of an AuditEvent as the next one links to it."""
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()


def link(event: dict[str, Any], previous: str) -> dict[str, Any]:
    """Add the chain link to ``event`` (in place) and return it."""
    event.setdefault("extension", []).append({"url": CHAIN_URL, "valueString": previous})
    return event


def previous_of(event: Mapping[str, Any]) -> str | None:
    """The digest ``event`` links to, or None when it carries no link."""
    for ext in event.get("extension", ()):
        if isinstance(ext, Mapping) and ext.get("url") == CHAIN_URL:
            value = ext.get("valueString")
            return value if isinstance(value, str) else None
    return None


async def chain_head(store: Store) -> str:
    """The digest of the newest AuditEvent (GENESIS for an empty trail)."""
    page = await store.history(HistoryQuery(resource_type="AuditEvent", count=1))
    newest = next((v for v in page.versions if v.body is not None), None)
    return GENESIS if newest is None else event_hash(orjson.loads(newest.body or b"{}"))


@dataclass
class ChainReport:
    """What ``verify_chain`` found."""

    count: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "intact" if self.ok else "BROKEN"
        lines = [f"audit chain {state}: {self.count} events, head {self.head}"]
        return "\n".join([*lines, *self.problems[:50]])


async def verify_chain(store: Store) -> ChainReport:
    """Walk the AuditEvent history and check every link (see the module docstring)."""
    report = ChainReport()
    expected: str | None = None  # the link the newer event holds
    newer = "the newest event"
    before: int | None = None
    while True:
        query = HistoryQuery(resource_type="AuditEvent", count=_PAGE, before_seq=before)
        page = await store.history(query)
        for version in page.versions:
            event: dict[str, Any] = orjson.loads(version.body or b"{}")
            digest = event_hash(event)
            if report.count == 0:
                report.head = digest
            report.count += 1
            if version.version != 1 or version.body is None:
                report.problems.append(f"AuditEvent/{version.id} was changed or deleted")
            if expected is not None and digest != expected:
                report.problems.append(f"before {newer}: a record was changed or removed")
            expected, newer = previous_of(event), f"AuditEvent/{version.id}"
            if expected is None:
                report.problems.append(f"{newer} carries no chain link")
        if page.next_before_seq is None:
            break
        before = page.next_before_seq
    if expected not in (None, GENESIS):
        report.problems.append(f"before {newer}: the oldest records were removed")
    return report
