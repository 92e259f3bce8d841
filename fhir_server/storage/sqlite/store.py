"""The embedded store: SQLite in WAL mode under the data dir.

Threads, not the event loop, touch SQLite: one writer thread owns the only
writing connection (SQLite allows one writer at a time anyway), a small pool of
reader threads each own a read connection, so neither a slow query nor an
fsync ever blocks the loop. Every write returns only once an fsync of the WAL
that started after its commit has finished (``group_commit``): durable before
it is acknowledged, with concurrent writers sharing the flush.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fhir_server.errors import StorageUnavailable, VersionConflict
from fhir_server.run_to_end import run_to_end
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
from fhir_server.storage.sqlite import dicom_index, queries, search_sql
from fhir_server.storage.sqlite.auth_data import SqliteAuthData, create_auth_schema
from fhir_server.storage.sqlite.checkpoint import Checkpointer
from fhir_server.storage.sqlite.current_cache import CurrentCache
from fhir_server.storage.sqlite.group_commit import GroupCommit
from fhir_server.storage.sqlite.wal_peek import WalHeaderPeek

T = TypeVar("T")

DB_FILE = "radhub.sqlite3"

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # the fsync at commit is ours: see group_commit
    "PRAGMA busy_timeout=10000",
    "PRAGMA cache_size=-65536",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA mmap_size=268435456",
)

# The writer never checkpoints inside a COMMIT: see checkpoint.py.
_WRITER_PRAGMAS = ("PRAGMA wal_autocheckpoint=0", "PRAGMA journal_size_limit=16777216")


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    for pragma in _PRAGMAS:
        if readonly and "journal_mode" in pragma:
            continue
        conn.execute(pragma)
    return conn


_SEND_EVERY = 50


class SqliteTransaction:
    """A unit of work on the writer connection (BEGIN IMMEDIATE … COMMIT).

    Writes are buffered and sent to the writer thread together (before a search,
    which must see them, and at commit): a transaction Bundle of 500 entries then
    costs a handful of thread hand-offs instead of 500. A version conflict among
    buffered writes surfaces at that flush, still inside the transaction.
    """

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._pending: list[NewVersion] = []
        self._sent: list[asyncio.Future[list[StoredVersion]]] = []
        self._latest: dict[tuple[str, str], StoredVersion] = {}
        self.stored: list[StoredVersion] = []  # as the writer wrote them (with seq)

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        buffered = self._latest.get((resource_type, id))
        if buffered is not None:
            return buffered
        # FIFO on the one writer thread: runs after every write sent before it
        return await self._store._writer_call(queries.read_current, resource_type, id)

    async def search(self, query: SearchQuery) -> SearchPage:
        await self.flush()
        registry = self._store.registry
        return await self._store._writer_call(search_sql.run_search, query=query, registry=registry)

    async def write(self, version: NewVersion) -> StoredVersion:
        key = (version.resource_type, version.id)
        previous = self._latest.get(key)
        if previous is not None and version.version != previous.version + 1:
            raise VersionConflict(
                f"{version.resource_type}/{version.id} is at version {previous.version}, "
                f"cannot write version {version.version}"
            )
        self._pending.append(version)
        written = StoredVersion(
            version.resource_type,
            version.id,
            version.version,
            version.last_updated,
            version.method,
            version.body,
        )
        self._latest[key] = written
        if len(self._pending) >= _SEND_EVERY:
            self._send()
        return written

    def _send(self) -> None:
        """Queue the buffered writes on the writer thread without waiting: SQLite works
        (GIL released) while the caller validates and indexes the next entries."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._sent.append(self._store._writer_future(queries.write_versions, pending))

    async def abandon(self) -> None:
        """Wait for writes already sent (their failures no longer matter: rolling back)."""
        self._pending.clear()
        sent, self._sent = self._sent, []
        await asyncio.gather(*sent, return_exceptions=True)

    async def flush(self) -> None:
        """Write everything buffered (inside the transaction) and wait for it."""
        self._send()
        sent, self._sent = self._sent, []
        results = await asyncio.gather(*sent, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            self.stored.extend(result)


class SqliteStore:
    """The embedded adapter of the storage port (see ``fhir_server.storage.base``)."""

    name = "sqlite"

    def __init__(self, data_dir: Path, registry: SearchRegistry, *, readers: int = 4) -> None:
        self.path = data_dir / DB_FILE
        self.registry = registry
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        wal = self.path.with_name(self.path.name + "-wal")
        self._checkpointer = Checkpointer(wal, partial(_connect, self.path, readonly=False))
        self._group = GroupCommit(wal, after_sync=self._checkpointer.poke)
        self._current = CurrentCache()
        self._peek: WalHeaderPeek | None = None
        self.dicom: DicomIndex = dicom_index.SqliteDicomIndex(self)
        self.auth = SqliteAuthData(self)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = await self._run(self._writer_pool, self._open_writer)
            # on the loop's thread: the cache looks at it there (current_cache)
            watch = _connect(self.path, readonly=True)
            self._peek = WalHeaderPeek.open(self.path)
            self._current.watch(watch, self._peek)
            self._current.check_external()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open {self.path}: {exc}") from exc

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path, readonly=False)
        for pragma in _WRITER_PRAGMAS:
            conn.execute(pragma)
        queries.create_schema(conn, search_sql.INDEX_DDL)
        dicom_index.create_schema(conn)
        create_auth_schema(conn)
        return conn

    async def close(self) -> None:
        watch = self._current.watching
        self._current.watch(None)
        if watch is not None:
            watch.close()
        if self._writer is not None:
            writer = self._writer
            self._writer = None
            await self._run(self._writer_pool, writer.close)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        self._group.close()
        self._checkpointer.close()
        with self._reader_conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._peek is not None:
            self._peek.close()  # last: closing it drops this process's locks (wal_peek)
            self._peek = None

    # -- plumbing -----------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, fn, *args)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    async def run_read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` on a read-only connection in a reader thread."""

        def call() -> T:
            with queries.map_sqlite_errors():
                return fn(self._reader(), *args, **kwargs)

        return await self._run(self._reader_pool, call)

    async def run_write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` on the writer connection, between transactions.

        For sub-stores (DICOM index, auth data) that own their tables: ``fn`` must
        BEGIN and COMMIT itself when it writes more than one statement.
        """
        async with self._write_lock:
            result = await self._writer_call(fn, *args, **kwargs)
            ticket = self._group.committed()
        await self._group.durable(ticket)
        return result

    async def _writer_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on the writer connection. Cancelled, it still returns only once the
        call is over (``run_to_end``): a caller holding a lock for the write (the audit
        chain's, ``audit_lock``; ``_write_lock``) must not let go of it before the
        write has committed or failed."""
        return await run_to_end(self._writer_future(fn, *args, **kwargs))

    def _writer_future(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        writer = self._writer
        if writer is None:
            raise StorageUnavailable("the store is closed")

        def call() -> T:
            with queries.map_sqlite_errors():
                return fn(writer, *args, **kwargs)

        return asyncio.get_running_loop().run_in_executor(self._writer_pool, call)

    # -- the port -------------------------------------------------------------------

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        held = self._current.get(resource_type, id)
        if held is not None:
            return held
        generation = self._current.generation
        found = await self.run_read(queries.read_current, resource_type, id)
        if found is not None:
            self._current.offer(found, generation)
        return found

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None:
        return await self.run_read(queries.read_version, resource_type, id, version)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        return await self.run_read(queries.history, query)

    async def search(self, query: SearchQuery) -> SearchPage:
        return await self.run_read(search_sql.run_search, query=query, registry=self.registry)

    async def changes(
        self, after_seq: int, limit: int = 1000, resource_type: str | None = None
    ) -> list[StoredVersion]:
        return await self.run_read(queries.changes, after_seq, limit, resource_type)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            await self._writer_call(queries.begin)
            tx = SqliteTransaction(self)
            try:
                yield tx
                await tx.flush()
            except BaseException:
                await asyncio.shield(tx.abandon())
                await asyncio.shield(self._writer_call(queries.rollback))
                raise
            try:
                await asyncio.shield(self._writer_call(queries.commit))
            except BaseException:
                # a failed COMMIT leaves the transaction open: every later BEGIN would fail
                await asyncio.shield(self._writer_call(queries.rollback))
                raise
            ticket = self._group.committed()
            self._current.written(tx.stored)
        await self._group.durable(ticket)

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        async with self._write_lock:
            written = await self._writer_call(partial(queries.write_batch, versions=versions))
            ticket = self._group.committed()
            self._current.written(written)
        await self._group.durable(ticket)
        return written

    async def healthy(self) -> bool:
        try:
            await self.run_read(queries.ping)
        except Exception:
            return False
        return True
