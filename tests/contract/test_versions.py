"""Store contract: versions, conflicts, deletes, history, the change log, restart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fhir_server.errors import VersionConflict
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import HistoryQuery, NewVersion, Store

from .conftest import Backend, at, resource_version


def patient(id: str, family: str = "Smith", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, "name": [{"family": family}], **extra}


def body_of(raw: bytes | None) -> dict[str, Any]:
    assert raw is not None
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


async def write(store: Store, version: NewVersion) -> int:
    async with store.transaction() as tx:
        await tx.write(version)
    # the change sequence is given out at the latest at commit
    stored = await store.vread(version.resource_type, version.id, version.version)
    assert stored is not None
    return stored.seq


async def test_write_read_vread(store: Store, registry: SearchRegistry) -> None:
    first = await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    second = await write(store, resource_version(registry, patient("p1", "Jones"), 2, at(2)))
    assert second > first > 0

    current = await store.read("Patient", "p1")
    assert current is not None
    assert (current.version, current.method, current.deleted) == (2, "update", False)
    assert current.last_updated == at(2)
    assert body_of(current.body)["name"] == [{"family": "Jones"}]

    old = await store.vread("Patient", "p1", 1)
    assert old is not None and old.method == "create" and old.last_updated == at(1)
    assert body_of(old.body)["name"] == [{"family": "Smith"}]
    assert await store.vread("Patient", "p1", 3) is None
    assert await store.read("Patient", "nope") is None
    assert await store.read("Observation", "p1") is None


@pytest.mark.parametrize("stale", [1, 3])
async def test_wrong_version_conflicts(store: Store, registry: SearchRegistry, stale: int) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    with pytest.raises(VersionConflict):
        await write(store, resource_version(registry, patient("p1", "Other"), stale, at(2)))
    current = await store.read("Patient", "p1")
    assert current is not None and current.version == 1
    assert body_of(current.body)["name"] == [{"family": "Smith"}]
    page = await store.history(HistoryQuery("Patient", "p1"))
    assert [v.version for v in page.versions] == [1]


async def test_new_resource_must_start_at_version_one(
    store: Store, registry: SearchRegistry
) -> None:
    with pytest.raises(VersionConflict):
        await write(store, resource_version(registry, patient("p9"), 2, at(1)))
    assert await store.read("Patient", "p9") is None
    assert await store.changes(0) == []


async def test_delete_keeps_history(store: Store, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    await write(store, resource_version(registry, patient("p1"), 2, at(2), "delete"))
    gone = await store.read("Patient", "p1")
    assert gone is not None and gone.deleted and gone.body is None and gone.version == 2
    old = await store.vread("Patient", "p1", 1)
    assert old is not None and body_of(old.body)["id"] == "p1"
    page = await store.history(HistoryQuery("Patient", "p1"))
    assert [(v.version, v.method) for v in page.versions] == [(2, "delete"), (1, "create")]
    await write(store, resource_version(registry, patient("p1", "Back"), 3, at(3)))
    again = await store.read("Patient", "p1")
    assert again is not None and not again.deleted and again.version == 3


async def _history_fixture(store: Store, registry: SearchRegistry) -> None:
    """p1 v1@1 v2@4 (delete @6: v3), p2 v1@2, o1 v1@3 v2@5."""
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {}}
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    await write(store, resource_version(registry, patient("p2"), 1, at(2)))
    await write(store, resource_version(registry, observation, 1, at(3)))
    await write(store, resource_version(registry, patient("p1", "Jones"), 2, at(4)))
    await write(store, resource_version(registry, dict(observation, status="amended"), 2, at(5)))
    await write(store, resource_version(registry, patient("p1"), 3, at(6), "delete"))


def _keys(page: Any) -> list[str]:
    return [f"{v.resource_type}/{v.id}/{v.version}" for v in page.versions]


async def test_history_levels(store: Store, registry: SearchRegistry) -> None:
    await _history_fixture(store, registry)
    instance = await store.history(HistoryQuery("Patient", "p1"))
    assert _keys(instance) == ["Patient/p1/3", "Patient/p1/2", "Patient/p1/1"]
    assert instance.total == 3 and instance.next_before_seq is None
    by_type = await store.history(HistoryQuery("Patient"))
    assert _keys(by_type) == ["Patient/p1/3", "Patient/p1/2", "Patient/p2/1", "Patient/p1/1"]
    system = await store.history(HistoryQuery())
    assert system.total == 6
    assert _keys(system)[:2] == ["Patient/p1/3", "Observation/o1/2"]
    seqs = [v.seq for v in system.versions]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 6


async def test_history_since_and_at(store: Store, registry: SearchRegistry) -> None:
    await _history_fixture(store, registry)
    since = await store.history(HistoryQuery(since=at(4)))
    assert _keys(since) == ["Patient/p1/3", "Observation/o1/2", "Patient/p1/2"]
    assert since.total == 3
    # The versions current at t=4.5: p1 v2, p2 v1, o1 v1.
    snapshot = await store.history(HistoryQuery(at=at(4.5)))
    assert sorted(_keys(snapshot)) == ["Observation/o1/1", "Patient/p1/2", "Patient/p2/1"]
    assert snapshot.total == 3
    # At t=7 p1's current version is its deletion.
    deleted = await store.history(HistoryQuery("Patient", "p1", at=at(7)))
    assert [(v.version, v.method) for v in deleted.versions] == [(3, "delete")]
    assert (await store.history(HistoryQuery(at=at(0)))).versions == []


async def test_history_paging(store: Store, registry: SearchRegistry) -> None:
    await _history_fixture(store, registry)
    seen: list[str] = []
    cursor: int | None = None
    pages = 0
    while True:
        page = await store.history(HistoryQuery(count=4, before_seq=cursor))
        assert page.total == 6
        seen += _keys(page)
        pages += 1
        if page.next_before_seq is None:
            break
        cursor = page.next_before_seq
    assert pages == 2
    assert seen == _keys(await store.history(HistoryQuery(count=50)))
    assert len(seen) == 6


async def test_change_log(store: Store, registry: SearchRegistry) -> None:
    await _history_fixture(store, registry)
    log = await store.changes(0)
    assert [f"{v.resource_type}/{v.id}/{v.version}" for v in log] == [
        "Patient/p1/1",
        "Patient/p2/1",
        "Observation/o1/1",
        "Patient/p1/2",
        "Observation/o1/2",
        "Patient/p1/3",
    ]
    seqs = [v.seq for v in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert log[-1].deleted
    after = await store.changes(seqs[2])
    assert [v.seq for v in after] == seqs[3:]
    assert [v.seq for v in await store.changes(seqs[0], limit=2)] == seqs[1:3]
    assert await store.changes(seqs[-1]) == []
    # one type's changes only
    observations = await store.changes(0, resource_type="Observation")
    assert [f"{v.id}/{v.version}" for v in observations] == ["o1/1", "o1/2"]
    assert [v.seq for v in observations] == [seqs[2], seqs[4]]
    assert [v.version for v in await store.changes(seqs[2], 10, "Observation")] == [2]
    assert [v.version for v in await store.changes(0, 1, "Patient")] == [1]
    assert await store.changes(0, resource_type="Encounter") == []


async def test_change_log_hides_uncommitted_writes(store: Store, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    async with store.transaction() as tx:
        await tx.write(resource_version(registry, patient("p2"), 1, at(2)))
        assert [v.id for v in await store.changes(0)] == ["p1"]
    assert [v.id for v in await store.changes(0)] == ["p1", "p2"]


async def test_restart_keeps_everything(backend: Backend, registry: SearchRegistry) -> None:
    store = await backend.start()
    await _history_fixture(store, registry)
    before_log = await store.changes(0)
    before_history = _keys(await store.history(HistoryQuery()))
    await store.close()
    backend.opened.remove(store)

    reopened = await backend.start()
    assert [(v.seq, v.id, v.version) for v in await reopened.changes(0)] == [
        (v.seq, v.id, v.version) for v in before_log
    ]
    assert _keys(await reopened.history(HistoryQuery())) == before_history
    current = await reopened.read("Observation", "o1")
    assert current is not None and body_of(current.body)["status"] == "amended"
    with pytest.raises(VersionConflict):
        await write(reopened, resource_version(registry, patient("p2"), 1, at(7)))
    seq = await write(reopened, resource_version(registry, patient("p2"), 2, at(8)))
    assert seq > before_log[-1].seq
