"""What only the MongoDB adapter has to prove: its journal.

Crash recovery (roll back pending, roll forward committed), undo after a
failure in the middle of applying, and the guarantees that hold between two
radhub instances on one database (here: two stores on one emulator client).
Failures are injected; everything else is the real adapter on the emulator.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect

from fhir_server.errors import StorageUnavailable, VersionConflict
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import HistoryQuery
from fhir_server.storage.factory import build_store
from fhir_server.storage.mongo import journal
from fhir_server.storage.mongo.documents import COUNTERS, HISTORY, JOURNAL, RESOURCES, SEQ_COUNTER
from fhir_server.storage.mongo.journal import UnitOfWork
from fhir_server.storage.mongo.store import MongoStore

from .conftest import at, resource_version
from .test_versions import body_of, patient, write

DB = "radhub_journal"


@pytest.fixture
def client() -> Any:
    return AsyncMongoMockClient()


async def started(
    client: Any, registry: SearchRegistry, lease: float = 60.0, clock: Any = time.time
) -> MongoStore:
    store = MongoStore(client, DB, registry, lease_seconds=lease, clock=clock)
    await store.start()
    return store


class Clock:
    """Wall-clock seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def _seed(store: MongoStore, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))


async def _crash_midway(client: Any, registry: SearchRegistry, commit: bool) -> None:
    """A unit of work that updated p1 and created p2, then its process died."""
    unit = UnitOfWork(client[DB], lease_seconds=0.0)
    await unit.write(resource_version(registry, patient("p1", "Jones"), 2, at(2)))
    await unit.write(resource_version(registry, patient("p2"), 1, at(2)))
    if commit:
        await client[DB][JOURNAL].update_one({"_id": unit.id}, {"$set": {"state": "committed"}})


async def test_start_rolls_back_a_crashed_pending_unit(
    client: Any, registry: SearchRegistry
) -> None:
    await _seed(await started(client, registry), registry)
    await _crash_midway(client, registry, commit=False)
    store = await started(client, registry)
    p1 = await store.read("Patient", "p1")
    assert p1 is not None and p1.version == 1 and body_of(p1.body)["name"] == [{"family": "Smith"}]
    assert await store.read("Patient", "p2") is None
    assert [v.version for v in (await store.history(HistoryQuery("Patient"))).versions] == [1]
    assert await client[DB][JOURNAL].count_documents({}) == 0
    await write(store, resource_version(registry, patient("p1", "Again"), 2, at(3)))


async def test_start_rolls_a_committed_unit_forward(client: Any, registry: SearchRegistry) -> None:
    await _seed(await started(client, registry), registry)
    await _crash_midway(client, registry, commit=True)
    store = await started(client, registry)
    p1 = await store.read("Patient", "p1")
    assert p1 is not None and p1.version == 2
    assert [(v.id, v.version) for v in await store.changes(0)] == [("p1", 1), ("p1", 2), ("p2", 1)]
    assert await client[DB]["resources"].count_documents({"tx": {"$exists": True}}) == 0


async def test_start_raises_a_counter_restored_behind_history(
    client: Any, registry: SearchRegistry
) -> None:
    """A dump restored without point-in-time consistency: its counter is behind the
    highest ``seq`` in history. Start-up raises it, so writes do not collide with the
    numbers already used (409s on the unique ``seq`` index) and the change log shows
    every version."""
    store = await started(client, registry)
    await _seed(store, registry)
    await write(store, resource_version(registry, patient("p2"), 1, at(2)))
    await client[DB][COUNTERS].update_one({"_id": SEQ_COUNTER}, {"$set": {"value": 1}})
    store = await started(client, registry)
    await write(store, resource_version(registry, patient("p3"), 1, at(3)))
    assert [(v.id, v.seq) for v in await store.changes(0)] == [("p1", 1), ("p2", 2), ("p3", 3)]


async def test_changes_recover_an_expired_journal(client: Any, registry: SearchRegistry) -> None:
    store = await started(client, registry)
    await _seed(store, registry)
    await _crash_midway(client, registry, commit=False)
    assert [(v.id, v.version) for v in await store.changes(0)] == [("p1", 1)]
    assert await client[DB][JOURNAL].count_documents({}) == 0


def _on_insert_many(
    monkeypatch: pytest.MonkeyPatch, client: Any, hook: Callable[[str, int], Awaitable[None]]
) -> None:
    """``hook(collection, n)`` runs after the ``n``-th ``insert_many`` into each collection."""
    collection = type(client[DB]["resources"])
    real = collection.insert_many
    calls: Counter[str] = Counter()

    async def insert_many(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = await real(self, *args, **kwargs)
        calls[self.name] += 1
        await hook(self.name, calls[self.name])
        return done

    monkeypatch.setattr(collection, "insert_many", insert_many)


async def test_failure_while_applying_a_batch_undoes_it(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's resources are written (an update and two creates), then its history
    insert fails: every resource is restored, the creates removed."""
    store = await started(client, registry)
    await _seed(store, registry)

    async def fail_history(name: str, n: int) -> None:
        if name == HISTORY:
            raise AutoReconnect("connection lost")

    _on_insert_many(monkeypatch, client, fail_history)
    batch = [
        resource_version(registry, patient("p1", "Jones"), 2, at(2)),
        resource_version(registry, patient("p2"), 1, at(2)),
        resource_version(registry, patient("p3"), 1, at(2)),
    ]
    with pytest.raises(StorageUnavailable):
        await store.write_many(batch)
    p1 = await store.read("Patient", "p1")
    assert p1 is not None and p1.version == 1 and body_of(p1.body)["name"] == [{"family": "Smith"}]
    assert await store.read("Patient", "p2") is None
    assert [(v.id, v.version) for v in await store.changes(0)] == [("p1", 1)]
    assert await client[DB][HISTORY].count_documents({}) == 1
    monkeypatch.undo()
    assert len(await store.write_many(batch)) == 3


@pytest.mark.parametrize("race", ["update", "create"])
async def test_a_conflict_found_while_applying_a_batch_undoes_all_of_it(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    """Another instance writes one of the batch's resources between the batch's read
    and its bulk writes: the replace expecting version 1 matches nothing, or the insert
    of a new resource meets the unique ``_id``. Either is a conflict, and nothing of
    the batch stays, a resource it wrote twice included."""
    store, other = await started(client, registry), await started(client, registry)
    await _seed(store, registry)
    real = journal.next_seqs
    raced = False

    async def next_seqs(db: Any, n: int) -> list[int]:
        nonlocal raced
        if not raced:  # the batch has read its before-images: the other writer wins
            raced = True
            version = 2 if race == "update" else 1
            racing_id = "p1" if race == "update" else "p3"
            mine = patient(racing_id, "Other")
            await other.write_many([resource_version(registry, mine, version, at(2))])
        return await real(db, n)

    monkeypatch.setattr(journal, "next_seqs", next_seqs)
    batch = [
        resource_version(registry, patient("p2"), 1, at(3)),
        resource_version(registry, patient("p2", "Twice"), 2, at(3)),
        resource_version(registry, patient("p1", "Jones"), 2, at(3)),
        resource_version(registry, patient("p3"), 1, at(3)),
    ]
    with pytest.raises(VersionConflict):
        await store.write_many(batch)
    assert await store.read("Patient", "p2") is None
    won = "p1" if race == "update" else "p3"
    assert [(v.id, v.version) for v in await store.changes(0)][1:] == [
        (won, 2 if race == "update" else 1)
    ]
    current = await store.read("Patient", won)
    assert current is not None and body_of(current.body)["name"] == [{"family": "Other"}]
    assert await client[DB][JOURNAL].count_documents({}) == 0
    assert await client[DB][RESOURCES].count_documents({"tx": {"$exists": True}}) == 0


async def test_a_batch_longer_than_a_chunk_writes_a_resource_across_chunks(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applied two versions at a time: a resource's versions land in different chunks,
    each replace expecting the version the one before wrote."""
    monkeypatch.setattr(journal, "CHUNK", 2)
    store = await started(client, registry)
    await _seed(store, registry)
    families = ["A", "B", "C", "D"]
    batch = [resource_version(registry, patient("p2", "New"), 1, at(2))]
    batch += [
        resource_version(registry, patient("p1", f), i + 2, at(2)) for i, f in enumerate(families)
    ]
    batch += [resource_version(registry, patient("p2", "Last"), 2, at(2))]
    written = await store.write_many(batch)
    assert [(v.id, v.version) for v in written] == [(b.id, b.version) for b in batch]
    p1, p2 = await store.read("Patient", "p1"), await store.read("Patient", "p2")
    assert p1 is not None and p1.version == 5 and body_of(p1.body)["name"] == [{"family": "D"}]
    assert p2 is not None and p2.version == 2 and body_of(p2.body)["name"] == [{"family": "Last"}]
    history = (await store.history(HistoryQuery("Patient", "p1"))).versions
    assert [body_of(v.body)["name"][0]["family"] for v in history] == ["D", "C", "B", "A", "Smith"]


async def test_a_batch_applying_for_longer_than_its_lease_keeps_it(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three chunks of 4 s each against a lease of 10 s, and another instance's recovery
    after each: the writer renews its lease as it goes, so nothing is taken from it."""
    clock = Clock()
    writer = await started(client, registry, lease=10.0, clock=clock)
    other = await started(client, registry, lease=10.0, clock=clock)
    monkeypatch.setattr(journal, "CHUNK", 2)
    recovered: list[int] = []

    async def slow_chunks(name: str, n: int) -> None:
        if name == HISTORY:  # a chunk's last write
            clock.now += 4.0
            recovered.append(await other.recover())

    _on_insert_many(monkeypatch, client, slow_chunks)
    batch = [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(6)]
    await writer.write_many(batch)
    assert recovered == [0, 0, 0]
    assert [v.id for v in await other.changes(0)] == [f"p{i}" for i in range(6)]
    assert await client[DB][JOURNAL].count_documents({}) == 0


async def test_a_batch_that_recovery_took_over_writes_nothing_more(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer stalled past its lease after its first chunk, and another instance
    rolled it back: the writer's next renewal fails, so it writes no further chunk
    (which would be left marked by a journal that no longer exists if it then died)."""
    clock = Clock()
    writer = await started(client, registry, lease=10.0, clock=clock)
    other = await started(client, registry, lease=10.0, clock=clock)
    monkeypatch.setattr(journal, "CHUNK", 2)
    taken_over = False
    written_after: list[str] = []

    async def stall_once(name: str, n: int) -> None:
        nonlocal taken_over
        if taken_over:
            written_after.append(name)
        elif name == HISTORY:
            clock.now += 11.0
            assert await other.recover() == 1
            taken_over = True

    _on_insert_many(monkeypatch, client, stall_once)
    batch = [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(6)]
    with pytest.raises(StorageUnavailable, match="outlived its lease"):
        await writer.write_many(batch)
    assert written_after == []
    assert await client[DB][RESOURCES].count_documents({}) == 0
    assert await client[DB][HISTORY].count_documents({}) == 0
    assert await client[DB][JOURNAL].count_documents({}) == 0


async def test_the_change_log_recovers_a_journal_once_its_lease_ran_out_by_the_stores_clock(
    client: Any, registry: SearchRegistry
) -> None:
    clock = Clock()
    store = await started(client, registry, lease=10.0, clock=clock)
    await _seed(store, registry)
    crashed = UnitOfWork(client[DB], lease_seconds=10.0, clock=clock)
    await crashed.write_batch([resource_version(registry, patient("p2"), 1, at(2))])
    clock.now += 9.0
    assert [v.id for v in await store.changes(0)] == ["p1"]
    assert await client[DB][JOURNAL].count_documents({}) == 1  # still within its lease
    clock.now += 2.0
    assert [v.id for v in await store.changes(0)] == ["p1"]
    assert await client[DB][JOURNAL].count_documents({}) == 0
    assert await store.read("Patient", "p2") is None


def _failing_unlocks(monkeypatch: pytest.MonkeyPatch, client: Any, failures: int) -> None:
    """The first ``failures`` unlocks of ``resources`` (a committed unit's clean-up, an
    ``update_many``, which PyMongo does not retry) fail as a failover would."""
    collection = type(client[DB]["resources"])
    real = collection.update_many
    left = failures

    async def update_many(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal left
        if self.name == "resources" and left > 0:
            left -= 1
            raise AutoReconnect("primary stepped down")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(collection, "update_many", update_many)


async def test_a_committed_units_clean_up_is_tried_again(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else its documents stay locked against every other writer until its lease ends."""
    store = await started(client, registry)
    _failing_unlocks(monkeypatch, client, 1)
    await _seed(store, registry)
    assert await client[DB]["resources"].count_documents({"tx": {"$exists": True}}) == 0
    assert await client[DB][JOURNAL].count_documents({}) == 0


async def test_a_clean_up_that_fails_again_is_logged_and_the_write_stands(
    client: Any,
    registry: SearchRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await started(client, registry)
    _failing_unlocks(monkeypatch, client, 2)
    await _seed(store, registry)
    p1 = await store.read("Patient", "p1")
    assert p1 is not None and p1.version == 1
    assert "committed but its documents stay locked" in caplog.text
    assert await client[DB][JOURNAL].count_documents({"state": "committed"}) == 1


async def test_a_roll_back_cut_short_is_taken_over_when_its_claim_runs_out(
    client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recoverer claims a crashed unit's journal for the store's lease, as a writer
    holds it: if its roll-back is cut short (here the server goes away during it),
    another instance finishes the roll-back once that lease has run out, not before."""
    clock = Clock()
    first = await started(client, registry, lease=10.0, clock=clock)
    other = await started(client, registry, lease=10.0, clock=clock)
    await _seed(first, registry)
    crashed = UnitOfWork(client[DB], lease_seconds=10.0, clock=clock)
    await crashed.write(resource_version(registry, patient("p1", "Jones"), 2, at(2)))
    clock.now += 11.0
    collection = type(client[DB][RESOURCES])
    real = collection.bulk_write
    restores: list[str] = []

    async def lost_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == RESOURCES and not restores:
            restores.append(self.name)
            raise AutoReconnect("connection lost")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(collection, "bulk_write", lost_once)
    with pytest.raises(StorageUnavailable):
        await first.recover()
    assert restores == [RESOURCES]
    assert await client[DB][JOURNAL].count_documents({"state": "aborting"}) == 1
    clock.now += 9.0
    assert await other.recover() == 0  # the first recoverer's claim holds
    clock.now += 2.0
    assert await other.recover() == 1
    p1 = await other.read("Patient", "p1")
    assert p1 is not None and p1.version == 1 and body_of(p1.body)["name"] == [{"family": "Smith"}]
    assert await client[DB][JOURNAL].count_documents({}) == 0


async def test_a_resource_in_another_instances_unit_is_locked(
    client: Any, registry: SearchRegistry
) -> None:
    first, second = await started(client, registry), await started(client, registry)
    await _seed(first, registry)
    async with first.transaction() as tx:
        await tx.write(resource_version(registry, patient("p1", "Jones"), 2, at(2)))
        with pytest.raises(VersionConflict):
            await write(second, resource_version(registry, patient("p1", "Brown"), 2, at(3)))
        with pytest.raises(VersionConflict):
            await write(second, resource_version(registry, patient("p1", "Brown"), 3, at(3)))
        assert [v.version for v in await second.changes(0)] == [1]
    await write(second, resource_version(registry, patient("p1", "Brown"), 3, at(3)))
    assert [v.version for v in await second.changes(0)] == [1, 2, 3]


async def test_a_stalled_unit_loses_its_lease(client: Any, registry: SearchRegistry) -> None:
    stalled = await started(client, registry, lease=0.0)
    other = await started(client, registry)
    await _seed(other, registry)
    with pytest.raises(StorageUnavailable):
        async with stalled.transaction() as tx:
            await tx.write(resource_version(registry, patient("p2"), 1, at(2)))
            assert await other.recover() == 1
    assert await other.read("Patient", "p2") is None
    assert [v.id for v in await other.changes(0)] == ["p1"]


async def test_healthy_and_build_store(
    client: Any, registry: SearchRegistry, tmp_path: Path
) -> None:
    assert await (await started(client, registry)).healthy()
    settings = Settings(data_dir=tmp_path, mongodb_uri="mongodb://127.0.0.1:1/clinic")
    built = build_store(settings, registry)
    assert isinstance(built, MongoStore) and built.name == "mongodb"
    await built.close()
