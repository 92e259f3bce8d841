"""The embedded store's memory of current versions never serves a stale version:
not after this process writes, not after another process (another store on the
same file: ``radhub import`` while the server runs) writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.errors import StorageUnavailable
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import NewVersion, StoredVersion
from fhir_server.storage.sqlite import queries
from fhir_server.storage.sqlite.store import SqliteStore

REGISTRY = SearchRegistry.load()
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def patient(id: str, version: int, family: str) -> NewVersion:
    body = {"resourceType": "Patient", "id": id, "name": [{"family": family}]}
    moment = T0 + timedelta(seconds=version)
    return NewVersion(
        "Patient", id, version, moment, "create" if version == 1 else "update", orjson.dumps(body)
    )


async def write(store: SqliteStore, version: NewVersion) -> None:
    async with store.transaction() as tx:
        await tx.write(version)


def family(found: StoredVersion | None) -> str:
    assert found is not None and found.body is not None
    return str(orjson.loads(found.body)["name"][0]["family"])


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    server, other = SqliteStore(tmp_path, REGISTRY), SqliteStore(tmp_path, REGISTRY)
    await server.start()
    await other.start()
    try:
        yield server, other
    finally:
        await other.close()
        await server.close()


async def test_reads_are_remembered_and_own_writes_replace_them(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    server, _ = stores
    await write(server, patient("p1", 1, "First"))
    assert family(await server.read("Patient", "p1")) == "First"
    assert server._current.get("Patient", "p1") is not None  # served from memory next
    await write(server, patient("p1", 2, "Second"))
    assert family(await server.read("Patient", "p1")) == "Second"
    async with server.transaction() as tx:
        await tx.write(NewVersion("Patient", "p1", 3, T0 + timedelta(seconds=3), "delete", None))
    deleted = await server.read("Patient", "p1")
    assert deleted is not None and deleted.deleted and deleted.version == 3


async def test_another_writer_is_seen(stores: tuple[SqliteStore, SqliteStore]) -> None:
    server, other = stores
    await write(server, patient("p1", 1, "First"))
    assert family(await server.read("Patient", "p1")) == "First"
    await write(other, patient("p1", 2, "ByImport"))
    assert family(await server.read("Patient", "p1")) == "ByImport"


async def test_another_writer_is_seen_after_an_own_write(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """The other process's commit is followed by one of ours, which moves the
    log's head past it before anyone looked: the change log still names it."""
    server, other = stores
    await write(server, patient("p1", 1, "First"))
    assert family(await server.read("Patient", "p1")) == "First"
    await write(other, patient("p1", 2, "ByImport"))
    await write(server, patient("p2", 1, "Unrelated"))
    assert family(await server.read("Patient", "p1")) == "ByImport"


async def test_another_writers_commit_drops_only_what_it_replaced(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """The audit writer process commits AuditEvents several times a second; an
    import writes other resources: what they did not touch stays in memory."""
    server, other = stores
    for id in ("p1", "p2"):
        await write(server, patient(id, 1, "First"))
        await server.read("Patient", id)
    await other.write_many([audit_event(n) for n in range(3)])
    await write(other, patient("p3", 1, "New"))
    assert server._current.get("Patient", "p1") is not None
    await write(other, patient("p2", 2, "ByImport"))
    assert server._current.get("Patient", "p1") is not None
    assert server._current.get("Patient", "p2") is None
    assert family(await server.read("Patient", "p2")) == "ByImport"


async def test_a_memory_hit_asks_sqlite_nothing_until_someone_commits(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """While the WAL-index header is unchanged nobody committed: a hit is served
    without a statement (``wal_peek``); any process's commit makes it look again."""
    server, other = stores
    await write(server, patient("p1", 1, "First"))
    await server.read("Patient", "p1")
    watch = server._current.watching
    assert watch is not None
    statements: list[str] = []
    watch.set_trace_callback(statements.append)
    for _ in range(3):
        assert server._current.get("Patient", "p1") is not None
    assert statements == []
    await write(other, patient("p1", 2, "ByImport"))
    assert server._current.get("Patient", "p1") is None
    assert "PRAGMA data_version" in statements
    asked = len(statements)
    await server.read("Patient", "p1")
    server._current.get("Patient", "p1")
    assert len(statements) == asked  # the miss went to a reader; nobody committed since


async def test_without_shared_memory_every_hit_asks(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """No mapping of the ``-shm`` file (``WalHeaderPeek.open`` gave None): the
    memory asks ``PRAGMA data_version`` on every hit, as before, and still sees
    another process's commit."""
    server, other = stores
    watch = server._current.watching
    assert watch is not None
    server._current.watch(watch, None)
    await write(server, patient("p1", 1, "First"))
    await server.read("Patient", "p1")
    statements: list[str] = []
    watch.set_trace_callback(statements.append)
    assert server._current.get("Patient", "p1") is not None
    assert statements == ["PRAGMA data_version"]
    await write(other, patient("p1", 2, "ByImport"))
    assert server._current.get("Patient", "p1") is None


async def test_a_large_import_drops_everything(
    stores: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More changes than ``max_scan``: reading their whole log would cost more
    than starting over."""
    server, other = stores
    monkeypatch.setattr(server._current, "_max_scan", 2)
    await write(server, patient("p1", 1, "First"))
    await server.read("Patient", "p1")
    await other.write_many([audit_event(n) for n in range(3)])
    assert server._current.get("Patient", "p1") is None
    assert family(await server.read("Patient", "p1")) == "First"


async def test_a_read_begun_before_another_writers_commit_is_not_kept(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """The read saw p1 before the import changed it; the commit was seen (and
    p1 was not held, so nothing was dropped) before the read came back."""
    server, other = stores
    await write(server, patient("p1", 1, "First"))
    await write(server, patient("p2", 1, "Held"))
    server._current._drop(("Patient", "p1"))  # not held: the read goes to the database
    generation = server._current.generation
    old = await server.run_read(queries.read_current, "Patient", "p1")
    assert old is not None
    await write(other, patient("p1", 2, "ByImport"))
    server._current.get("Patient", "p2")  # looks: sees the commit
    server._current.offer(old, generation)
    assert family(await server.read("Patient", "p1")) == "ByImport"


async def test_a_rolled_back_write_is_not_remembered(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    server, _ = stores
    await write(server, patient("p1", 1, "First"))
    assert family(await server.read("Patient", "p1")) == "First"
    with pytest.raises(RuntimeError):
        async with server.transaction() as tx:
            await tx.write(patient("p1", 2, "Never"))
            raise RuntimeError("the client went away")
    assert family(await server.read("Patient", "p1")) == "First"


def test_memory_is_bounded_by_bytes_and_entries() -> None:
    from fhir_server.storage.sqlite.current_cache import CurrentCache

    cache = CurrentCache(capacity=100, max_bytes=1000, max_body=300)

    def version(id: str, size: int, n: int = 1) -> StoredVersion:
        return StoredVersion("Patient", id, n, T0, "create", b"x" * size, None)

    cache.written([version(f"p{i}", 200) for i in range(10)])
    assert len(cache) == 5 and cache.held_bytes == 1000  # the five most recent
    assert cache.get("Patient", "p9") is not None and cache.get("Patient", "p4") is None
    cache.written([version("big", 301)])  # over max_body: not kept
    assert cache.get("Patient", "big") is None and cache.held_bytes == 1000
    cache.written([version("p9", 100, 2)])  # replaced: its old size given back
    assert cache.held_bytes == 900 and len(cache) == 5
    small = CurrentCache(capacity=3)
    small.written([version(f"q{i}", 1) for i in range(5)])
    assert len(small) == 3


class HeldAfterCommit:
    """The server's next batch write held after it committed, before the store
    writes it through: the moment a read can see the database moved on."""

    def __init__(self, server: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.committed = asyncio.Event()
        self.release = asyncio.Event()
        real = server._writer_call

        async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
            result = await real(fn, *args, **kwargs)
            if getattr(fn, "func", None) is queries.write_batch:
                self.committed.set()
                await self.release.wait()
            return result

        monkeypatch.setattr(server, "_writer_call", call)
        self.writing: asyncio.Future[list[StoredVersion]] | None = None

    async def start(self, server: SqliteStore) -> None:
        """Remember p1, then commit a batch of AuditEvents and hold it there."""
        await write(server, patient("p1", 1, "First"))
        await server.read("Patient", "p1")
        self.writing = asyncio.ensure_future(server.write_many([audit_event(n) for n in range(3)]))
        await self.committed.wait()

    async def finish(self) -> None:
        assert self.writing is not None
        self.release.set()
        await self.writing


def audit_event(n: int) -> NewVersion:
    return NewVersion("AuditEvent", f"a{n}", 1, T0, "create", b'{"resourceType":"AuditEvent"}')


async def test_an_own_commit_under_way_keeps_the_memory(
    stores: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit trail commits batches beside the reads: the change log since
    the data_version change names only AuditEvents, which are not held."""
    server, _ = stores
    held = HeldAfterCommit(server, monkeypatch)
    await held.start(server)
    assert server._current.get("Patient", "p1") is not None
    await held.finish()
    assert server._current.get("Patient", "p1") is not None


async def test_another_writer_after_an_own_commit_under_way_is_seen(
    stores: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, other = stores
    held = HeldAfterCommit(server, monkeypatch)
    await held.start(server)
    await write(other, patient("p1", 2, "ByImport"))
    assert family(await server.read("Patient", "p1")) == "ByImport"
    await held.finish()
    assert family(await server.read("Patient", "p1")) == "ByImport"


def fail_the_next_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's next COMMIT fails as a full or failing disk would make it."""
    real_commit = queries.commit

    def failing_commit(conn: Any) -> None:
        monkeypatch.setattr(queries, "commit", real_commit)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(queries, "commit", failing_commit)


async def test_after_a_failed_commit_another_writer_is_seen(
    stores: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed batch's sequence numbers go to the next writer: another
    process's commit taking them is still seen."""
    server, other = stores
    await write(server, patient("p1", 1, "First"))
    await server.read("Patient", "p1")
    fail_the_next_commit(monkeypatch)
    with pytest.raises(StorageUnavailable):
        await server.write_many([audit_event(n) for n in range(3)])
    await write(other, patient("p1", 2, "ByImport"))  # takes the failed batch's numbers
    assert family(await server.read("Patient", "p1")) == "ByImport"
    await server.write_many([audit_event(9)])  # the writer connection is usable again


async def test_a_failed_transaction_commit_is_rolled_back(
    stores: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left open, it would make every later write of the server fail."""
    server, _ = stores
    fail_the_next_commit(monkeypatch)
    with pytest.raises(StorageUnavailable):
        await write(server, patient("p1", 1, "Lost"))
    await write(server, patient("p1", 1, "Kept"))
    assert family(await server.read("Patient", "p1")) == "Kept"
