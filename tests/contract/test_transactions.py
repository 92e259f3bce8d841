"""Store contract: transactions and write_many are all-or-nothing and see their writes."""

from __future__ import annotations

import pytest

from fhir_server.errors import VersionConflict
from fhir_server.search.ast import SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import HistoryQuery, Store

from .conftest import at, resource_version
from .test_versions import body_of, patient, write


class Boom(Exception):
    pass


def by_id(registry: SearchRegistry, id: str) -> SearchQuery:
    return parse_search("Patient", [("_id", id)], registry, strict=True).query


async def test_commit_and_own_writes(store: Store, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    async with store.transaction() as tx:
        await tx.write(resource_version(registry, patient("p1", "Jones"), 2, at(2)))
        await tx.write(resource_version(registry, patient("p2", "Brown"), 1, at(2)))
        mine = await tx.current("Patient", "p1")
        assert mine is not None and mine.version == 2
        assert body_of(mine.body)["name"] == [{"family": "Jones"}]
        found = await tx.search(by_id(registry, "p2"))
        assert [v.id for v in found.matches] == ["p2"]
        named = parse_search("Patient", [("name", "jones")], registry, strict=True).query
        assert [v.id for v in (await tx.search(named)).matches] == ["p1"]
    p2 = await store.read("Patient", "p2")
    assert p2 is not None and p2.version == 1
    assert [(v.id, v.version) for v in await store.changes(0)] == [("p1", 1), ("p1", 2), ("p2", 1)]


async def test_exception_rolls_everything_back(store: Store, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    log = await store.changes(0)
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.write(resource_version(registry, patient("p1", "Jones"), 2, at(2)))
            await tx.write(resource_version(registry, patient("p2"), 1, at(2)))
            await tx.write(resource_version(registry, patient("p1"), 3, at(3), "delete"))
            raise Boom()
    current = await store.read("Patient", "p1")
    assert current is not None and current.version == 1 and not current.deleted
    assert body_of(current.body)["name"] == [{"family": "Smith"}]
    assert await store.read("Patient", "p2") is None
    assert await store.vread("Patient", "p1", 2) is None
    assert [v.version for v in (await store.history(HistoryQuery("Patient"))).versions] == [1]
    assert await store.changes(0) == log
    assert (await store.search(by_id(registry, "p2"))).matches == []
    jones = parse_search("Patient", [("name", "jones")], registry, strict=True).query
    assert (await store.search(jones)).matches == []
    # Nothing is left locked: the same writes succeed afterwards.
    await write(store, resource_version(registry, patient("p2"), 1, at(4)))
    await write(store, resource_version(registry, patient("p1", "Jones"), 2, at(4)))


async def test_conflict_inside_transaction_undoes_earlier_writes(
    store: Store, registry: SearchRegistry
) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    with pytest.raises(VersionConflict):
        async with store.transaction() as tx:
            await tx.write(resource_version(registry, patient("p2"), 1, at(2)))
            await tx.write(resource_version(registry, patient("p1"), 1, at(2)))
    assert await store.read("Patient", "p2") is None
    assert len(await store.changes(0)) == 1


async def test_write_many_is_all_or_nothing(store: Store, registry: SearchRegistry) -> None:
    await write(store, resource_version(registry, patient("p1"), 1, at(1)))
    batch = [
        resource_version(registry, patient("a"), 1, at(2)),
        resource_version(registry, patient("b"), 1, at(2)),
        resource_version(registry, patient("p1"), 1, at(2)),  # stale
    ]
    with pytest.raises(VersionConflict):
        await store.write_many(batch)
    assert await store.read("Patient", "a") is None
    assert await store.read("Patient", "b") is None
    assert len(await store.changes(0)) == 1

    written = await store.write_many(
        [
            resource_version(registry, patient("a"), 1, at(3)),
            resource_version(registry, patient("a", "Twice"), 2, at(3)),
            resource_version(registry, patient("p1", "Jones"), 2, at(3)),
        ]
    )
    seqs = [v.seq for v in written]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    a = await store.read("Patient", "a")
    assert a is not None and a.version == 2 and body_of(a.body)["name"] == [{"family": "Twice"}]
    assert [v.seq for v in await store.changes(0)][1:] == seqs
    assert await store.write_many([]) == []
