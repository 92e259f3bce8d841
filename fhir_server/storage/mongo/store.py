"""The MongoDB adapter of the storage port, on PyMongo's async API.

Collections: ``resources`` (current versions, with the search index inside each
document), ``history`` (every version, unique on ``(type, id, version)``),
``counters`` (the change sequence) and ``journal`` (units of work in flight).
See ``documents`` for their shape, ``search_compile`` for search.

All-or-nothing without multi-document transactions (the emulator has no
sessions, and a standalone server none either): every transaction and every
``write_many`` is a journalled unit of work -- before-images written ahead,
conditional writes that detect version conflicts atomically, one atomic commit
point, undo on failure, and recovery of crashed writers at start-up. The full
protocol is in ``journal``.

Within one process an ``asyncio.Lock`` serialises units of work, as the SQLite
writer does. Across several radhub instances on one database:

- writes stay all-or-nothing and version conflicts are still detected (the
  conditional replace and the unique history index are atomic on the server);
  a resource written by another instance's unfinished unit is locked by its
  ``tx`` marker and a write to it is refused as a version conflict;
- the change log never shows an uncommitted version nor skips one committed
  later (see ``journal``, "The change log");
- reads outside a transaction (``read``, ``vread``, ``history``, ``search``) see
  the applied state, which may include writes of a unit of work that is still in
  flight and may yet roll back (read-uncommitted), unlike SQLite, where readers
  see only committed data;
- leases compare wall clocks, so instances need synchronised clocks, and a
  lease (``lease_seconds``) must outlast any pause of a live transaction between
  two of its writes, and any one bulk write (bounded by ``timeoutMS``, 30 s
  unless the URI says otherwise, within two thirds of the 60 s lease): a unit
  renews its lease while it applies (``journal``, "Recovery").

Durability: ``from_uri`` asks for ``w=majority`` with journaling, so a write is
acknowledged only once it is on disk on a majority of the replica set. Every
operation is bounded (PyMongo's ``timeoutMS``, ``DEFAULT_TIMEOUT_MS`` unless the
URI sets a timeout of its own): without one, a write waiting for a majority that
cannot answer would hang for ever, holding the write lock; it is a 503 instead.
Start-up (index builds on a large collection) gets ``STARTUP_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from inspect import isawaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.errors import PyMongoError

from fhir_server.errors import VersionConflict
from fhir_server.search.ast import SearchQuery
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import (
    HistoryPage,
    HistoryQuery,
    NewVersion,
    SearchPage,
    StoredVersion,
    Transaction,
)
from fhir_server.storage.dicom_port import DicomIndex
from fhir_server.storage.mongo import reads
from fhir_server.storage.mongo.auth_data import MongoAuthData
from fhir_server.storage.mongo.dicom_index import MongoDicomIndex
from fhir_server.storage.mongo.documents import HISTORY, RESOURCES, Doc
from fhir_server.storage.mongo.errors import DRIVER_ERRORS, duplicate_key, translate
from fhir_server.storage.mongo.journal import (
    Clock,
    Database,
    UnitOfWork,
    raise_counter,
    recover,
)
from fhir_server.storage.mongo.search import run_search
from fhir_server.storage.mongo.search_indexes import search_indexes

DEFAULT_DATABASE = "radhub"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_TIMEOUT_MS = 30_000
STARTUP_TIMEOUT_SECONDS = 6 * 3600.0
# URI options that bound operations: one of them there, and the URI's choice stands
_TIMEOUT_OPTIONS = frozenset({"timeoutms", "wtimeoutms", "sockettimeoutms"})


def client_options(uri: str) -> dict[str, Any]:
    """The client options ``from_uri`` adds to ``uri``'s (see the module docstring)."""
    options: dict[str, Any] = {"w": "majority", "journal": True}
    given = {name.lower() for name in parse_qs(urlsplit(uri).query)}
    if not given & _TIMEOUT_OPTIONS:
        options["timeoutMS"] = DEFAULT_TIMEOUT_MS
    return options


def _indexes() -> dict[str, list[IndexModel]]:
    """The indexes search, history and recovery need, by collection."""
    resources = [
        IndexModel([("type", ASCENDING), ("id", ASCENDING)]),
        IndexModel([("type", ASCENDING), ("lu", ASCENDING), ("pk", ASCENDING)]),
        IndexModel([("lu", ASCENDING), ("pk", ASCENDING)]),
        IndexModel([("pk", ASCENDING)]),
        IndexModel([("tx", ASCENDING)], sparse=True),
    ]
    resources += search_indexes()
    history = [
        IndexModel([("type", ASCENDING), ("id", ASCENDING), ("version", ASCENDING)], unique=True),
        IndexModel([("seq", ASCENDING)], unique=True),
        IndexModel([("type", ASCENDING), ("seq", ASCENDING)]),
        IndexModel([("lu", ASCENDING)]),
        IndexModel([("tx", ASCENDING)], sparse=True),
    ]
    return {RESOURCES: resources, HISTORY: history}


@contextmanager
def map_mongo_errors() -> Iterator[None]:
    """Translate driver failures into the server's error hierarchy (``errors``)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        if duplicate_key(exc):
            raise VersionConflict(f"a concurrent writer won: {exc}") from exc
        raise translate(exc) from exc


class MongoTransaction:
    """A journalled unit of work; reads see the applied state, its own writes included."""

    def __init__(self, store: MongoStore, unit: UnitOfWork) -> None:
        self._store = store
        self._unit = unit

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        return await self._store.read(resource_type, id)

    async def search(self, query: SearchQuery) -> SearchPage:
        return await self._store.search(query)

    async def write(self, version: NewVersion) -> StoredVersion:
        with map_mongo_errors():
            return await self._unit.write(version)


class MongoStore:
    """The MongoDB adapter of the storage port (see ``fhir_server.storage.base``)."""

    name = "mongodb"

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        registry: SearchRegistry,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        owns_client: bool = False,
        clock: Clock = time.time,
    ) -> None:
        self.registry = registry
        self._client = client
        self._db: Database = client[database]
        self._lease = lease_seconds
        self._clock = clock  # what leases are measured by (wall-clock seconds)
        self._owns_client = owns_client
        self._lock = asyncio.Lock()
        self._active: set[str] = set()
        self.dicom: DicomIndex = MongoDicomIndex(self._db, self._lock)
        self.auth = MongoAuthData(self._db)

    @classmethod
    def from_uri(cls, uri: str, registry: SearchRegistry) -> MongoStore:
        """A store on the database the URI names (default ``radhub``); connects lazily."""
        client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, **client_options(uri))
        database = client.get_default_database(default=DEFAULT_DATABASE).name
        return cls(client, database, registry, owns_client=True)

    async def start(self) -> None:
        with pymongo.timeout(STARTUP_TIMEOUT_SECONDS):
            with map_mongo_errors():
                for collection, models in _indexes().items():
                    await self._db[collection].create_indexes(models)
                await recover(self._db, self._lease, now=self._clock())
                await raise_counter(self._db)
                await self.dicom.start()
            await self.auth.create_indexes()

    async def close(self) -> None:
        if self._owns_client:
            closing: Any = self._client.close()
            if isawaitable(closing):
                await closing

    async def recover(self) -> int:
        """Finish the journals of crashed writers (their leases ran out); returns how many."""
        with map_mongo_errors():
            return await recover(self._db, self._lease, skip=set(self._active), now=self._clock())

    # -- reads ----------------------------------------------------------------------

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        with map_mongo_errors():
            return await reads.read_current(self._db, resource_type, id)

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None:
        with map_mongo_errors():
            return await reads.read_version(self._db, resource_type, id, version)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        with map_mongo_errors():
            return await reads.history(self._db, query)

    async def search(self, query: SearchQuery) -> SearchPage:
        with map_mongo_errors():
            return await run_search(self._db, self.registry, query)

    async def changes(
        self, after_seq: int, limit: int = 1000, resource_type: str | None = None
    ) -> list[StoredVersion]:
        with map_mongo_errors():
            now = self._clock()
            found, stale = await reads.changes(self._db, after_seq, limit, resource_type, now)
            if stale and len(found) < limit and await self.recover():
                found, _ = await reads.changes(self._db, after_seq, limit, resource_type, now)
            return found

    # -- writes ---------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            unit = UnitOfWork(self._db, self._lease, self._clock)
            self._active.add(unit.id)
            try:
                async with self._unit_of_work(unit):
                    yield MongoTransaction(self, unit)
            finally:
                self._active.discard(unit.id)

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        async with self._lock:
            unit = UnitOfWork(self._db, self._lease, self._clock)
            self._active.add(unit.id)
            try:
                async with self._unit_of_work(unit):
                    with map_mongo_errors():
                        return await unit.write_batch(versions)
            finally:
                self._active.discard(unit.id)

    @asynccontextmanager
    async def _unit_of_work(self, unit: UnitOfWork) -> AsyncIterator[None]:
        """Commit on normal exit; undo on an exception or when the commit fails."""
        try:
            yield
            with map_mongo_errors():
                await asyncio.shield(unit.commit())
        except BaseException:
            try:
                await asyncio.shield(unit.rollback())
            except PyMongoError:
                pass  # the journal stays pending: recovery rolls it back when its lease ends
            raise

    async def healthy(self) -> bool:
        try:
            await self._db.command("ping")
        except Exception:
            return False
        return True
