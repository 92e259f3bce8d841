"""What only the MongoDB adapter of the DICOM index has to prove: without
multi-document transactions, a batch that fails part-way loses nothing it held
and leaves no wrong aggregates. Failures are injected into the emulator's
collection; everything else is the real adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import bson
import orjson
import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect, BulkWriteError, DuplicateKeyError

from fhir_server.errors import StorageUnavailable
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.dicom_port import MODALITIES_KEY, DicomQuery, KeyFilter
from fhir_server.storage.mongo import dicom_meta
from fhir_server.storage.mongo.dicom_search import INSTANCES, SERIES, STUDIES
from fhir_server.storage.mongo.errors import MAX_DOCUMENT
from fhir_server.storage.mongo.store import MongoStore

from .test_dicom_index import (
    IMAGE_SERIES,
    IMAGE_STUDY,
    STATE_SERIES,
    STATE_STUDY,
    described,
    el,
    qido_uids,
    record,
)

DB = "radhub_dicom"


@pytest.fixture
async def store(registry: SearchRegistry) -> MongoStore:
    made = MongoStore(AsyncMongoMockClient(), DB, registry)
    await made.start()
    return made


_WRITES = ("insert_one", "replace_one", "bulk_write")
_EVERYTHING = (*_WRITES, "find_one", "update_one", "update_many", "delete_one", "delete_many")
_EVERYTHING += ("count_documents", "distinct", "find")


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
    ``only`` of them, if given; a bulk write applies the writes before the failing one,
    then raises); with ``outage``, so does every later operation on any collection
    (the server went away)."""
    collection = type(store._db[INSTANCES])
    done = 0
    down = False

    def fails(n: int) -> bool:
        return n > after and (only is None or n <= after + only)

    def failing(name: str) -> Any:
        real = getattr(collection, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal done, down
            if down:
                raise error
            if self.name != INSTANCES or name not in _WRITES:
                return real(self, *args, **kwargs)
            writes = list(args[0]) if name == "bulk_write" else [args[0]]
            cut = next((i for i in range(len(writes)) if fails(done + i + 1)), None)
            if cut is None:
                done += len(writes)
                return real(self, writes if name == "bulk_write" else args[0], *args[1:], **kwargs)
            return _fail_after(real, self, name, writes[:cut], kwargs, error, cut)

        return call

    async def _fail_after(
        real: Any, this: Any, name: str, before: list[Any], kwargs: Any, raised: Exception, cut: int
    ) -> Any:
        nonlocal done, down
        if before:
            await real(this, before, **kwargs)
        done += cut + 1
        down = outage
        raise raised

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


async def test_start_up_removes_a_new_study_whose_batch_died_before_its_series(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch writes its study first. The server went away before the series, and
    stayed away through the batch's recount: a new study without series is left,
    marked. The next start removes it (QIDO would list it, with nothing in it)."""
    collection = type(store._db[SERIES])
    down = False

    def failing(name: str) -> Any:
        real = getattr(collection, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal down
            down = down or (self.name == SERIES and name == "bulk_write")
            if down:
                raise AutoReconnect("gone")
            return real(self, *args, **kwargs)

        return call

    for name in _EVERYTHING:
        monkeypatch.setattr(collection, name, failing(name))
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch(mr_batch())
    monkeypatch.undo()
    assert await store.dicom.study("1.1") is not None  # as the outage left it
    restarted = MongoStore(store._client, DB, registry)
    await restarted.start()
    assert await restarted.dicom.study("1.1") is None
    assert (await restarted.dicom.search(DicomQuery("study"))).matches == []


def with_frames(rec: Any, mib: float) -> Any:
    """``rec`` with about ``mib`` MiB of per-frame functional group items in its
    attributes and metadata, as an enhanced multi-frame instance has (a few fat items:
    the emulator copies each element, and would take minutes over a real one's)."""
    item = {"00209157": {"vr": "UL", "Value": [1]}, "00204000": {"vr": "LT", "Value": ["x" * 4000]}}
    items = [item] * int(mib * 1024 * 1024 / 4000)
    attrs = rec.instance_attrs | {"52009230": {"vr": "SQ", "Value": items}}
    return replace(rec, instance_attrs=attrs, metadata=orjson.dumps(attrs))


def too_large(rec: Any) -> Any:
    """``rec`` with attributes alone past what one document holds (the emulator takes it)."""
    return with_frames(rec, 16.5)


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


def large_metadata(rec: Any) -> Any:
    """``rec`` with metadata over two chunks long and attributes that, beside it, would
    not fit one document (as an enhanced CT of 8,000 frames), though each alone does."""
    made = with_frames(rec, 9)
    assert len(made.metadata) > 2 * dicom_meta.CHUNK
    assert len(bson.encode(made.instance_attrs)) + len(made.metadata) > MAX_DOCUMENT
    return made


async def chunk_versions(store: MongoStore) -> list[tuple[str, str, int]]:
    found = store._db[dicom_meta.CHUNKS].find({}, {"sop": 1, "v": 1, "i": 1})
    return sorted([(d["sop"], d["v"], d["i"]) async for d in found])


async def test_large_metadata_is_kept_in_chunks_and_read_back(store: MongoStore) -> None:
    rec = large_metadata(record("1.1", "1.1.1", "1.1.1.1", number=1))
    small = record("1.1", "1.1.1", "1.1.1.2", number=2)
    results = await store.dicom.store_batch([rec, small])
    assert [r.outcome for r in results] == ["stored", "stored"]
    assert await store.dicom.metadata("1.1") == [rec.metadata, small.metadata]
    doc = await store._db[INSTANCES].find_one({"_id": "1.1.1.1"})
    assert doc is not None and doc["meta"] is None and len(bson.encode(doc)) < MAX_DOCUMENT
    version = rec.blob.sha256[:16]
    assert await chunk_versions(store) == [("1.1.1.1", version, i) for i in range(3)]


async def test_an_overwrite_replaces_the_chunks_and_a_delete_removes_them(
    store: MongoStore,
) -> None:
    await store.dicom.store_batch([large_metadata(record("1.1", "1.1.1", "1.1.1.1"))])
    new = large_metadata(record("1.1", "1.1.1", "1.1.1.1", content="v2"))
    (result,) = await store.dicom.store_batch([new], overwrite=True)
    assert result.outcome == "replaced"
    assert await store.dicom.metadata("1.1") == [new.metadata]
    assert {v for _, v, _ in await chunk_versions(store)} == {new.blob.sha256[:16]}
    inline = record("1.1", "1.1.1", "1.1.1.1", content="v3")
    await store.dicom.store_batch([inline], overwrite=True)
    assert await store.dicom.metadata("1.1") == [inline.metadata]
    assert await chunk_versions(store) == []
    await store.dicom.store_batch([new], overwrite=True)
    await store.dicom.delete("1.1")
    assert await chunk_versions(store) == []


async def test_a_failed_overwrite_keeps_the_stored_metadata(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = large_metadata(record("1.1", "1.1.1", "1.1.1.1"))
    await store.dicom.store_batch([old])
    fail_instance_writes(monkeypatch, store, AutoReconnect("primary stepped down"))
    new = large_metadata(record("1.1", "1.1.1", "1.1.1.1", content="v2"))
    with pytest.raises(StorageUnavailable):
        await store.dicom.store_batch([new], overwrite=True)
    monkeypatch.undo()
    assert await store.dicom.metadata("1.1") == [old.metadata]
    await store.dicom.store_batch([new], overwrite=True)  # the failed try's chunks replaced
    assert await store.dicom.metadata("1.1") == [new.metadata]
    assert {v for _, v, _ in await chunk_versions(store)} == {new.blob.sha256[:16]}


async def test_a_read_that_an_overwrite_overtook_reads_again(store: MongoStore) -> None:
    old = large_metadata(record("1.1", "1.1.1", "1.1.1.1"))
    await store.dicom.store_batch([old])
    stale = await store._db[INSTANCES].find_one({"_id": "1.1.1.1"}, dicom_meta.FIELDS)
    new = large_metadata(record("1.1", "1.1.1", "1.1.1.1", content="v2"))
    await store.dicom.store_batch([new], overwrite=True)
    assert stale is not None
    assert await dicom_meta.read(store._db, INSTANCES, stale) == new.metadata


def before_first_write(
    monkeypatch: pytest.MonkeyPatch,
    store: MongoStore,
    collection_name: str,
    methods: Sequence[str],
    act: Callable[[str], Awaitable[Any]],
) -> None:
    """``act(method)`` runs once, before ``store``'s first call of one of ``methods`` on
    ``collection_name``; the call goes on unless ``act`` raises (the server's answer)."""
    collection = type(store._db[collection_name])
    done = False

    def hook(name: str) -> Any:
        real = getattr(collection, name)

        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal done
            if self.name == collection_name and not done:
                done = True
                await act(name)
            return await real(self, *args, **kwargs)

        return call

    for name in methods:
        monkeypatch.setattr(collection, name, hook(name))


def race_on_parents(
    monkeypatch: pytest.MonkeyPatch, store: MongoStore, meanwhile: Callable[[], Awaitable[Any]]
) -> None:
    """``meanwhile`` runs once, when ``store`` has read the index and is about to write
    its first parent (a study): another radhub instance's batch, landing in between."""

    async def act(_: str) -> None:
        await meanwhile()

    before_first_write(monkeypatch, store, STUDIES, ("update_one", "bulk_write"), act)


@pytest.mark.parametrize(
    ("overwrite", "theirs", "outcome"),
    [
        (False, "", "duplicate"),
        (False, "theirs", "conflict"),
        (True, "theirs", "replaced"),
    ],
    ids=["same-bytes", "other-bytes", "both-overwrite"],
)
async def test_the_same_sop_instance_stored_by_another_radhub_meanwhile(
    store: MongoStore,
    registry: SearchRegistry,
    monkeypatch: pytest.MonkeyPatch,
    overwrite: bool,
    theirs: str,
    outcome: str,
) -> None:
    """Two instances of radhub on one database store one SOP Instance UID at once. The
    one that writes second finds the study changed since it read it, reads and plans
    its batch again, and reports what a re-send after the first gets: the same bytes a
    duplicate, others a conflict (STOW: 0x0111), or with ``overwrite`` a replacement
    of the first's version (whose blob it names, to be removed). Without ``overwrite``
    it does not overwrite the first's instance, nor fails as an outage; the index
    names the stored blob, counted once."""
    other = MongoStore(store._client, DB, registry)
    await other.start()
    if overwrite:
        await store.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.1", content="stored")])
    first = record("1.1", "1.1.1", "1.1.1.1", content=theirs)

    async def other_stores_first() -> None:
        (done,) = await other.dicom.store_batch([first], overwrite=overwrite)
        assert done.outcome == ("replaced" if overwrite else "stored")

    race_on_parents(monkeypatch, store, other_stores_first)
    mine = record("1.1", "1.1.1", "1.1.1.1")
    (result,) = await store.dicom.store_batch([mine], overwrite=overwrite)
    assert result.outcome == outcome
    assert result.previous == (first.blob if overwrite else None)
    (row,) = await store.dicom.instance_files("1.1")
    assert row.blob == (mine.blob if overwrite else first.blob)
    study = await store.dicom.study("1.1")
    assert study is not None and study.instance_count == 1


async def test_one_new_study_started_by_two_radhubs_for_two_patients_keeps_the_first(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances of radhub on one database receive the first images of one new
    Study Instance UID at once, for two patients. The one whose study write comes
    second finds the study another patient's, as a re-send would once the first
    had finished: its instances are refused (``other-patient``, STOW: a wrong-
    patient image), none is written into the first patient's study, and the
    series it had begun there is not left behind."""
    other = MongoStore(store._client, DB, registry)
    await other.start()
    theirs = record("1.1", "1.1.1", "1.1.1.1", patient_key="PAT-1\\")

    async def other_starts_the_study() -> None:
        (done,) = await other.dicom.store_batch([theirs])
        assert done.outcome == "stored"

    race_on_parents(monkeypatch, store, other_starts_the_study)
    mine = [
        record("1.1", "1.1.2", "1.1.2.1", patient_key="PAT-2\\"),
        record("1.2", "1.2.1", "1.2.1.1", patient_key="PAT-2\\"),  # a study of its own
    ]
    results = await store.dicom.store_batch(mine)
    assert [r.outcome for r in results] == ["other-patient", "stored"]
    study = await store.dicom.study("1.1")
    assert study is not None
    assert (study.patient_key, study.series_count, study.instance_count) == ("PAT-1\\", 1, 1)
    assert [f.uid for f in await store.dicom.instance_files("1.1")] == ["1.1.1.1"]
    assert [s.uid for s in await store.dicom.series_of("1.1")] == ["1.1.1"]
    assert [f.uid for f in await store.dicom.instance_files("1.2")] == ["1.2.1.1"]


async def test_one_new_study_started_by_two_radhubs_for_one_patient_takes_both(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for one patient, as a server answers it: the other instance's
    insert of the study lands between this upsert's query and its insert, and the
    server refuses the insert with E11000 (it retries by itself only an upsert
    filtered on ``_id`` alone, and this one is filtered on the patient key too).
    The study is this patient's: the instances go into it, not refused as
    another patient's."""
    other = MongoStore(store._client, DB, registry)
    await other.start()

    async def refuse(name: str) -> None:
        (done,) = await other.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.1")])
        assert done.outcome == "stored"
        message = "E11000 duplicate key error collection: radhub.dicom_studies index: _id_"
        error = {"index": 0, "code": 11000, "errmsg": message}
        raise BulkWriteError({"writeErrors": [error], "nInserted": 0, "nMatched": 0})

    before_first_write(monkeypatch, store, STUDIES, ("bulk_write",), refuse)
    (result,) = await store.dicom.store_batch([record("1.1", "1.1.2", "1.1.2.1")])
    assert result.outcome == "stored"
    study = await store.dicom.study("1.1")
    assert study is not None
    assert (study.patient_key, study.series_count, study.instance_count) == ("PA\\", 2, 2)


async def test_two_radhubs_merging_into_one_study_at_once_keep_each_other_s_attributes(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance of radhub stores a study's images between this one's reading
    the index and its writing a presentation state of the study (which it took for a
    new study): each attribute is set on its own, so the state's empty accession
    number and lack of the rest do not erase the images' values, and its new
    description replaces theirs. The match keys follow: the state's write finds the
    study changed since it was read and is planned again, so it does not set keys
    merged from a study without the images' (a search by the accession number would
    then miss the study)."""
    other = MongoStore(store._client, DB, registry)
    await other.start()

    async def other_stores_the_images() -> None:
        (done,) = await other.dicom.store_batch([described("5.1.1.1", IMAGE_STUDY, IMAGE_SERIES)])
        assert done.outcome == "stored"

    race_on_parents(monkeypatch, store, other_stores_the_images)
    state_study = {**STATE_STUDY, "00081030": el("LO", "CT HEAD W/O")}
    (result,) = await store.dicom.store_batch([described("5.1.1.2", state_study, STATE_SERIES)])
    assert result.outcome == "stored"
    study = await store.dicom.study("5.1")
    assert study is not None and study.instance_count == 2
    expected = {**IMAGE_STUDY, "00081030": el("LO", "CT HEAD W/O")}
    assert {tag: study.attrs.get(tag) for tag in expected} == expected
    (series,) = await store.dicom.series_of("5.1")
    assert series.attrs["0008103E"] == IMAGE_SERIES["0008103E"]
    assert await qido_uids(store, "study", AccessionNumber="LW-ACC") == ["5.1"]
    assert await qido_uids(store, "study", ReferringPhysicianName="ref*") == ["5.1"]
    assert await qido_uids(store, "study", StudyDescription="CT HEAD W/O") == ["5.1"]
    assert await qido_uids(store, "study", StudyDescription="CT HEAD") == []
    assert await qido_uids(store, "series", SeriesDescription="AXIAL") == ["5.1.1"]


async def test_a_recount_overtaken_by_another_radhub_s_batch_counts_again(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance of radhub stores a second instance of the series, and recounts
    it, between this one's counting the series and its writing the count. The write
    is a compare-and-set on the series' revision: it finds the series written to and
    counts again, instead of putting back a count older than the other's."""
    other = MongoStore(store._client, DB, registry)
    await other.start()

    async def other_stores_one_more(_: str) -> None:
        (done,) = await other.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.2")])
        assert done.outcome == "stored"

    before_first_write(monkeypatch, store, SERIES, ("update_one",), other_stores_one_more)
    (result,) = await store.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.1")])
    assert result.outcome == "stored"
    (series,) = await store.dicom.series_of("1.1")
    study = await store.dicom.study("1.1")
    assert study is not None
    assert (series.instance_count, study.instance_count) == (2, 2)


async def test_a_refused_batch_leaves_the_series_the_other_radhub_is_filling(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for two patients and one Series UID, the other instance caught
    between writing its study and series and writing its instances: the series is
    empty for that moment. The refused batch has written nothing into the study and
    recounts none of it, so it does not remove that series and study from under the
    other instance, whose instance is then indexed in them."""
    other = MongoStore(store._client, DB, registry)
    await other.start()
    at_instances, go_on = asyncio.Event(), asyncio.Event()
    instances = type(store._db[INSTANCES])
    write = instances.bulk_write

    async def held(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == INSTANCES and not go_on.is_set():
            at_instances.set()
            await go_on.wait()
        return await write(self, *args, **kwargs)

    monkeypatch.setattr(instances, "bulk_write", held)
    theirs = record("1.1", "1.1.1", "1.1.1.1", patient_key="PAT-2\\")
    theirs_stored: list[asyncio.Task[Any]] = []

    async def other_is_writing_its_instances() -> None:
        theirs_stored.append(asyncio.create_task(other.dicom.store_batch([theirs])))
        await at_instances.wait()

    race_on_parents(monkeypatch, store, other_is_writing_its_instances)
    mine = record("1.1", "1.1.1", "1.1.1.2", patient_key="PAT-1\\")
    (result,) = await store.dicom.store_batch([mine])
    go_on.set()
    (done,) = await theirs_stored[0]
    assert (result.outcome, done.outcome) == ("other-patient", "stored")
    study = await store.dicom.study("1.1")
    assert study is not None
    assert (study.patient_key, study.series_count, study.instance_count) == ("PAT-2\\", 1, 1)
    assert [s.uid for s in await store.dicom.series_of("1.1")] == ["1.1.1"]
    assert [f.uid for f in await store.dicom.instance_files("1.1")] == ["1.1.1.1"]


async def test_a_duplicate_key_from_the_server_is_a_conflict_not_an_outage(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race, with the server's answer injected: another instance's write of the
    UID landed first, and the server refuses this one with E11000, in the form the
    write that meets it raises (a bulk write's write error, or a DuplicateKeyError).
    That is a conflict (0x0111), not the outage (503, 0xA700) it was reported as."""
    other = MongoStore(store._client, DB, registry)
    await other.start()
    first = record("1.1", "1.1.1", "1.1.1.1", content="theirs")

    async def refuse(name: str) -> None:
        await other.dicom.store_batch([first])
        message = "E11000 duplicate key error collection: radhub.dicom_instances index: _id_"
        if name != "bulk_write":
            raise DuplicateKeyError(message, 11000)
        error = {"index": 0, "code": 11000, "errmsg": message}
        raise BulkWriteError({"writeErrors": [error], "nInserted": 0, "nMatched": 0})

    before_first_write(monkeypatch, store, INSTANCES, _WRITES, refuse)
    (result,) = await store.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.1")])
    assert result.outcome == "conflict"
    (row,) = await store.dicom.instance_files("1.1")
    assert row.blob == first.blob
