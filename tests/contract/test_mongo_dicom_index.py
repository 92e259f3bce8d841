"""What only the MongoDB adapter of the DICOM index has to prove: without
multi-document transactions, a batch that fails part-way loses nothing it held
and leaves no wrong aggregates. Failures are injected into the emulator's
collection; everything else is the real adapter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect

from fhir_server.errors import StorageUnavailable
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.dicom_port import MODALITIES_KEY, DicomQuery, KeyFilter
from fhir_server.storage.mongo.dicom_search import INSTANCES, SERIES, STUDIES
from fhir_server.storage.mongo.errors import MAX_DOCUMENT
from fhir_server.storage.mongo.store import MongoStore

from .test_dicom_index import record

DB = "radhub_dicom"


@pytest.fixture
async def store(registry: SearchRegistry) -> MongoStore:
    made = MongoStore(AsyncMongoMockClient(), DB, registry)
    await made.start()
    return made


_WRITES = ("insert_one", "replace_one")
_EVERYTHING = (*_WRITES, "find_one", "update_one", "update_many", "delete_one", "delete_many")
_EVERYTHING += ("count_documents", "distinct")


def fail_instance_writes(
    monkeypatch: pytest.MonkeyPatch,
    store: MongoStore,
    error: Exception,
    *,
    after: int = 0,
    only: int | None = None,
    outage: bool = False,
) -> None:
    """The instance document writes after the first ``after`` raise ``error`` (only
    ``only`` of them, if given); with ``outage``, so does every later operation on
    any collection (the server went away)."""
    collection = type(store._db[INSTANCES])
    done = 0
    down = False

    def failing(name: str) -> Any:
        real = getattr(collection, name)

        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal done, down
            if down:
                raise error
            if self.name == INSTANCES and name in _WRITES:
                done += 1
                if done > after and (only is None or done <= after + only):
                    down = outage
                    raise error
            return await real(self, *args, **kwargs)

        return call

    for name in _EVERYTHING if outage else _WRITES:
        monkeypatch.setattr(collection, name, failing(name))


def mr_batch() -> list[Any]:
    return [record("1.1", "1.1.1", f"1.1.1.{i}", modality="MR") for i in range(1, 4)]


async def assert_counts(store: MongoStore, instances: int) -> None:
    """Study 1.1 counts ``instances`` MR instances in one series, and QIDO finds it."""
    study = await store.dicom.study("1.1")
    assert study is not None
    assert (study.series_count, study.instance_count, study.modalities) == (1, instances, ("MR",))
    assert [s.instance_count for s in await store.dicom.series_of("1.1")] == [instances]
    mr = KeyFilter(MODALITIES_KEY, "eq", ("MR",))
    page = await store.dicom.search(DicomQuery("study", study_filters=(mr,)))
    assert [m.study.uid for m in page.matches] == ["1.1"]


async def test_a_failed_overwrite_keeps_the_stored_version(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = record("1.1", "1.1.1", "1.1.1.1")
    await store.dicom.store_batch([old])
    fail_instance_writes(monkeypatch, store, AutoReconnect("primary stepped down"))
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch(
            [record("1.1", "1.1.1", "1.1.1.1", content="v2")], overwrite=True
        )
    monkeypatch.undo()
    (row,) = await store.dicom.instance_files("1.1")
    assert row.blob == old.blob


async def test_a_batch_that_fails_part_way_leaves_right_counts(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_instance_writes(monkeypatch, store, AutoReconnect("failover"), after=2, only=1)
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch(mr_batch())
    assert len(await store.dicom.instances("1.1")) == 2
    await assert_counts(store, 2)


async def test_a_resend_repairs_the_counts_an_outage_left_stale(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server went away during the batch and its recount: the instances written
    are all "duplicate" when sent again, and that re-send recounts their parents."""
    fail_instance_writes(monkeypatch, store, AutoReconnect("gone"), after=2, outage=True)
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch(mr_batch())
    monkeypatch.undo()
    study = await store.dicom.study("1.1")
    assert study is not None and study.instance_count == 0  # stale, as the outage left it
    again = await store.dicom.store_batch(mr_batch()[:2])
    assert [r.outcome for r in again] == ["duplicate", "duplicate"]
    await assert_counts(store, 2)
    before = await store.dicom.study("1.1")
    await store.dicom.store_batch(mr_batch()[:2])  # counts right: no recount, no new revision
    assert await store.dicom.study("1.1") == before


async def test_start_up_repairs_the_counts_an_outage_left_stale(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_instance_writes(monkeypatch, store, AutoReconnect("gone"), after=2, outage=True)
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch(mr_batch())
    monkeypatch.undo()
    restarted = MongoStore(store._client, DB, registry)
    await restarted.start()
    await assert_counts(restarted, 2)


def too_large(rec: Any) -> Any:
    """``rec`` with instance attributes (and metadata) past what one document holds, as
    an enhanced multi-frame instance's functional groups are (the emulator takes it)."""
    groups = {"52009230": {"vr": "SQ", "Value": [{"00209157": {"vr": "UL", "Value": [i]}}
                                                  for i in range(MAX_DOCUMENT // 60)]}}  # fmt: skip
    attrs = rec.instance_attrs | groups
    return replace(rec, instance_attrs=attrs, metadata=orjson.dumps(attrs))


async def test_an_instance_too_large_for_one_document_is_refused_alone(store: MongoStore) -> None:
    """Refused before anything of it is written (no study, no series), with words for
    the client; the rest of its batch is stored."""
    small = record("1.1", "1.1.1", "1.1.1.1")
    large = too_large(record("2.2", "2.2.1", "2.2.1.1"))
    results = await store.dicom.store_batch([small, large])
    assert [r.outcome for r in results] == ["stored", "unindexable"]
    assert "too large for this archive's index" in results[1].detail
    assert await store.dicom.study("2.2") is None
    assert await store._db[SERIES].count_documents({"study": "2.2"}) == 0
    assert [f.uid for f in await store.dicom.instance_files("1.1")] == ["1.1.1.1"]


async def test_an_overwrite_too_large_keeps_the_stored_version(store: MongoStore) -> None:
    old = record("1.1", "1.1.1", "1.1.1.1")
    await store.dicom.store_batch([old])
    new = too_large(record("1.1", "1.1.1", "1.1.1.1", content="v2"))
    (result,) = await store.dicom.store_batch([new], overwrite=True)
    assert result.outcome == "unindexable"
    (row,) = await store.dicom.instance_files("1.1")
    assert row.blob == old.blob


async def test_an_integer_beyond_64_bits_is_refused(store: MongoStore) -> None:
    """A private UV value of 2**64 - 5: BSON holds signed 64-bit integers only."""
    rec = record("1.1", "1.1.1", "1.1.1.1")
    uv = {"00091011": {"vr": "UV", "Value": [2**64 - 5]}}
    (result,) = await store.dicom.store_batch([replace(rec, instance_attrs=uv)])
    assert (result.outcome, result.detail) == (
        "unindexable",
        "it holds an integer beyond 64 bits, which this archive's index cannot hold",
    )
    assert await store._db[STUDIES].count_documents({}) == 0
