"""What the MongoDB adapter's writes cost in commands (each a round trip, and with
``w=majority`` and journaling, a wait for a majority's disks): a batch costs a few
bulk writes, whatever its size, not one or two per version or instance."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient

from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.mongo.journal import UnitOfWork
from fhir_server.storage.mongo.store import MongoStore

from .conftest import at, resource_version
from .mongo_round_trips import count_round_trips
from .test_dicom_index import record
from .test_versions import patient

DB = "radhub_round_trips"
N = 200  # a batch size the emulator writes quickly (it scans its collections per write)
# find befores; counter floor, journal insert; seq numbers; resources; history; commit;
# unlock resources, unlock history, forget the journal
UNIT_OF_WORK = 10


@pytest.fixture
def client() -> Any:
    return AsyncMongoMockClient()


@pytest.fixture
async def store(client: Any, registry: SearchRegistry) -> MongoStore:
    made = MongoStore(client, DB, registry)
    await made.start()
    return made


async def _batch_cost(
    store: MongoStore, counted: Counter[str], versions: list[Any]
) -> Counter[str]:
    counted.clear()
    await store.write_many(versions)
    return Counter(counted)


async def test_a_batch_of_creates_costs_what_one_create_does(
    store: MongoStore, client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of N events was 2N + 8 commands (an insert into resources and one into
    history per event: 2,008 for a 1,000-event audit batch); it is the 10 of one write."""
    counted = count_round_trips(monkeypatch, client)
    one = await _batch_cost(store, counted, [resource_version(registry, patient("x"), 1, at(1))])
    many = [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(N)]
    assert await _batch_cost(store, counted, many) == one
    assert sum(one.values()) == UNIT_OF_WORK


async def test_a_batch_of_updates_costs_what_one_update_does(
    store: MongoStore, client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaces are one ordered bulk write, a resource written twice in it included."""
    await store.write_many(
        [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(N)]
    )
    counted = count_round_trips(monkeypatch, client)
    one = await _batch_cost(
        store, counted, [resource_version(registry, patient("p0", "A"), 2, at(2))]
    )
    many = [resource_version(registry, patient(f"p{i}", "B"), 2, at(3)) for i in range(1, N)]
    many.append(resource_version(registry, patient("p1", "C"), 3, at(3)))
    assert await _batch_cost(store, counted, many) == one
    assert sum(one.values()) == UNIT_OF_WORK


async def test_a_mixed_batch_costs_one_command_more(
    store: MongoStore, client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creates and updates: the inserts and the replaces are a bulk write each."""
    await store.write_many(
        [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(N // 2)]
    )
    counted = count_round_trips(monkeypatch, client)
    mixed = [
        resource_version(
            registry,
            patient(f"p{i}", "B") if i < N // 2 else patient(f"p{i}"),
            2 if i < N // 2 else 1,
            at(2),
        )
        for i in range(N)
    ]
    assert sum((await _batch_cost(store, counted, mixed)).values()) == UNIT_OF_WORK + 1


async def test_rolling_a_batch_back_costs_a_few_commands(
    store: MongoStore, client: Any, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery of a crashed unit of N updates was 2N + 4 commands (a history read and a
    restore per version); it reads the bodies in one query and restores in one bulk
    write."""
    await store.write_many(
        [resource_version(registry, patient(f"p{i}"), 1, at(1)) for i in range(N)]
    )
    crashed = UnitOfWork(client[DB], lease_seconds=0.0)
    await crashed.write_batch(
        [resource_version(registry, patient(f"p{i}", "B"), 2, at(2)) for i in range(N)]
    )
    counted = count_round_trips(monkeypatch, client)
    assert await store.recover() == 1
    # the expired journals; claim one; read the bodies; restore; drop history; forget
    assert sum(counted.values()) == 6
    p1 = await store.read("Patient", "p1")
    assert p1 is not None and p1.version == 1


async def _dicom_cost(
    store: MongoStore, counted: Counter[str], records: list[Any], **kw: Any
) -> int:
    counted.clear()
    await store.dicom.store_batch(records, **kw)
    return sum(counted.values())


async def test_a_dicom_batch_costs_what_one_instance_does(
    store: MongoStore, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOW batch of 64 instances of one series was 393 commands (three reads, two
    parent upserts and the instance write per instance); it is the 14 of one instance:
    three reads, the series, studies and instances in a bulk write each, and the
    recount of the series and its study (each count written by a compare-and-set
    that also clears the row's dirty mark). An overwrite of all 64 costs one more (the
    replaced versions' metadata chunks, all removed in one command)."""
    counted = count_round_trips(monkeypatch, client)
    one = await _dicom_cost(store, counted, [record("1.1", "1.1.1", "1.1.1.0")])
    batch = [record("1.2", "1.2.1", f"1.2.1.{i}") for i in range(64)]
    assert await _dicom_cost(store, counted, batch) == one == 14
    again = [record("1.2", "1.2.1", f"1.2.1.{i}", content="v2") for i in range(64)]
    assert await _dicom_cost(store, counted, again, overwrite=True) == one + 1
    # all duplicates: the three reads, and whether their series were left dirty
    assert await _dicom_cost(store, counted, again) == 3 + 1
