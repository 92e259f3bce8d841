"""The storage port: what every adapter (embedded SQLite, MongoDB) provides.

The store keeps, per resource type and id, the current version and every past
version (immutable), each with a global change sequence ``seq`` that only grows:
the change log later consumers (subscriptions, HL7 out, caches) follow with a
durable cursor. Versioning rules (what the next version is, what meta says) are
decided once above the store, in ``fhir_server.interactions``; the store only
refuses a write whose version is not exactly the current one plus one, which is
how concurrent writers are detected.

A write is acknowledged only once it is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from fhir_server.search.ast import SearchQuery
from fhir_server.search.values import IndexEntry
from fhir_server.storage.auth_port import AuthData
from fhir_server.storage.dicom_port import DicomIndex

Method = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of one resource as stored. ``body`` is the resource JSON with its
    ``meta`` already set, or None for a deletion."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: Method
    body: bytes | None
    seq: int = 0

    @property
    def deleted(self) -> bool:
        return self.method == "delete"


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to write. ``version`` must be the current version plus one (1 if new)."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: Method
    body: bytes | None
    index: Sequence[IndexEntry] = ()


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Instance (type and id), type (type only) or system history, newest first.

    See https://hl7.org/fhir/R4/http.html#history
    """

    resource_type: str | None = None
    id: str | None = None
    since: datetime | None = None
    at: datetime | None = None
    count: int = 50
    before_seq: int | None = None  # keyset cursor: only versions with seq < before_seq


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    total: int | None
    next_before_seq: int | None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """Matches (current, not deleted) in query order, the included resources, the
    total when asked for, and opaque cursors for the neighbouring pages."""

    matches: list[StoredVersion]
    includes: list[StoredVersion] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


class Transaction(Protocol):
    """A unit of work: everything written through it commits together or not at all,
    and what it reads is consistent with what it writes."""

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        """The current version (possibly a deletion) or None if never written."""

    async def search(self, query: SearchQuery) -> SearchPage:
        """Search as of this transaction, seeing its own writes."""

    async def write(self, version: NewVersion) -> StoredVersion:
        """Write a version; raises VersionConflict unless it follows the current one
        (at the latest when the transaction commits). The returned version's ``seq``
        may be 0 until then."""


class Store(Protocol):
    """The storage port. See the module docstring."""

    name: str
    dicom: DicomIndex  # the DICOM index sub-store (``fhir_server.storage.dicom_port``)

    @property
    def auth(self) -> AuthData:
        """The auth sub-store (see ``auth_port``)."""

    async def start(self) -> None:
        """Open connections and create schema and indexes."""

    async def close(self) -> None:
        """Flush and release everything."""

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        """The current version (possibly a deletion) or None if never written."""

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None:
        """One version, or None."""

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """Versions newest first, following ``query``."""

    async def search(self, query: SearchQuery) -> SearchPage:
        """Current, non-deleted resources matching ``query``."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A unit of work; commits on normal exit, rolls back on an exception."""

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        """Write independent versions in one durable batch (import, audit)."""

    async def changes(
        self, after_seq: int, limit: int = 1000, resource_type: str | None = None
    ) -> list[StoredVersion]:
        """The change log: versions with ``seq > after_seq`` in ``seq`` order (of
        ``resource_type`` only, if given: a consumer of one type need not read the
        audit trail's stream of AuditEvents)."""

    async def healthy(self) -> bool:
        """Whether the store answers."""
