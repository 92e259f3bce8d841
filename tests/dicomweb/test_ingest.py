"""The ingest service without HTTP, and the pure DICOM → ImagingStudy mapping."""

from __future__ import annotations

import errno
import hashlib
import io
import pickle
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import bson
import orjson
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.dataset import Dataset

from dicomweb.blobstore import FileBlobStore, StagedBlob
from dicomweb.imaging_study import (
    ARCHIVE_ELEMENTS,
    EN_REPRESENTATION,
    PatientNamespaces,
    StudyLinks,
    coded_concept,
    fhir_started,
    human_name,
    map_patient,
    map_study,
    name_text,
    patient_identifier,
    with_client_elements,
)
from dicomweb.ingest import (
    Failed,
    IngestOptions,
    IngestService,
    Stored,
    failure,
    failure_reason,
    refusal_of,
)
from dicomweb.ingest_parse import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    InstanceHeader,
    InstanceRejected,
)
from dicomweb.records import describe_instance, split_levels
from fhir_server.errors import StorageUnavailable
from fhir_server.resources.worker_pool import WorkerPool
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import Store
from fhir_server.storage.dicom_port import (
    BlobLocation,
    InstanceRow,
    SeriesRow,
    StoreResult,
    StudyRow,
)
from fhir_server.storage.sqlite.store import SqliteStore
from tests.dicomweb.archive_app import settled, study_patient
from tests.dicomweb.dicom_data import make_instance, with_values


async def stream(*bodies: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
    for body in bodies:

        async def chunks(data: bytes = body) -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        yield chunks()


class CountingIndex:
    """Wraps a real index to count its batch writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def store_batch(self, records: Any, *, overwrite: bool = False) -> Any:
        self.batches.append(len(records))
        return await self.inner.store_batch(records, overwrite=overwrite)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    made = SqliteStore(tmp_path / "db", SearchRegistry.load())
    await made.start()
    yield made
    await made.close()


async def test_batches_and_outcomes(store: SqliteStore, tmp_path: Path) -> None:
    index = CountingIndex(store.dicom)
    blobs = FileBlobStore(tmp_path / "blobs")
    service = IngestService(index, blobs, None, IngestOptions("http://x/dicomweb", batch_size=10))  # type: ignore[arg-type]
    bodies = [make_instance("1.2", "1.2.1", f"1.2.1.{i}", number=i) for i in range(25)]
    report = await service.ingest(stream(*bodies, b"junk"))
    assert index.batches == [10, 10, 5]
    assert len(report.stored) == 25 and [f.reason for f in report.failed] == [0xC000]
    assert len(await blobs.keys()) == 25
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))  # rejected bodies leave nothing
    await _assert_hashed(store, blobs, "1.2", bodies)
    conflict = await service.ingest_one(
        c
        async for s in stream(make_instance("1.2", "1.2.1", "1.2.1.3", name="X^Y"))
        async for c in s
    )
    assert isinstance(conflict, Failed) and conflict.reason == 0x0111
    assert len(await blobs.keys()) == 25


async def test_instances_are_described_in_worker_processes(
    store: SqliteStore, tmp_path: Path
) -> None:
    """The server's road: parsing and index records in another process, pipelined
    with receiving; refusals (raised there) keep their reasons and their order."""
    blobs = FileBlobStore(tmp_path / "blobs")
    pool = WorkerPool(1)
    options = IngestOptions("http://x/dicomweb", batch_size=4)
    service = IngestService(store.dicom, blobs, None, options, offload=pool.run)
    good = [make_instance("1.3", "1.3.1", f"1.3.1.{i}", number=i) for i in range(6)]
    other_study = make_instance("9.9", "9.9.1", "9.9.1.1")
    try:
        report = await service.ingest(
            stream(good[0], b"junk", *good[1:4], other_study, good[4], b"DICM", good[5]),
            expected_study="1.3",
        )
    finally:
        pool.close()
    assert sorted(s.sop_uid for s in report.stored) == [f"1.3.1.{i}" for i in range(6)]
    assert [f.reason for f in report.failed] == [0xC000, 0xA900, 0xC000]
    assert report.failed[1].sop_uid == "9.9.1.1"
    rows = await store.dicom.instances("1.3")
    assert len(rows) == 6 and all(r.blob.key and r.blob.size > 0 for r in rows)
    assert sorted(await blobs.keys()) == sorted(r.blob.key for r in rows)
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))  # refused bodies leave nothing
    await _assert_hashed(store, blobs, "1.3", good)


async def _assert_hashed(
    store: SqliteStore, blobs: FileBlobStore, study: str, bodies: list[bytes]
) -> None:
    """Each stored file is recorded (and keyed) under the SHA-256 of what was sent,
    which ingest computes where it describes the instance, not as it writes it."""
    sent = {hashlib.sha256(body).hexdigest(): body for body in bodies}
    files = await store.dicom.instance_files(study)
    assert len(files) == len(bodies)
    for file in files:
        assert file.blob.sha256 in sent and file.blob.key.endswith(f".{file.blob.sha256[:16]}.dcm")
        assert blobs.path_for(file.blob.key).read_bytes() == sent[file.blob.sha256]


async def test_a_failed_fsync_fails_the_batch_and_keeps_nothing(
    store: SqliteStore, tmp_path: Path
) -> None:
    class FailingDisk(FileBlobStore):
        async def make_durable_many(self, staged: Sequence[StagedBlob]) -> list[Exception | None]:
            return [OSError(5, "Input/output error") for _ in staged]

    blobs = FailingDisk(tmp_path / "blobs")
    service = IngestService(store.dicom, blobs, None, IngestOptions("http://x"))
    good = make_instance("1.4", "1.4.1", "1.4.1.1")
    report = await service.ingest(stream(good, b"junk"))
    assert report.stored == []
    assert [(f.reason, f.sop_uid) for f in report.failed] == [
        (PROCESSING_FAILURE, "1.4.1.1"),
        (0xC000, None),  # it was not DICOM in the first place: said so
    ]
    assert await store.dicom.instances("1.4") == []
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def _full_database() -> Exception:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    return full


def _wrapped(cause: Exception) -> Exception:
    try:
        raise RuntimeError("the store failed") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), OUT_OF_RESOURCES),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), OUT_OF_RESOURCES),
        (_wrapped(OSError(errno.ENOSPC, "No space left on device")), OUT_OF_RESOURCES),
        (_wrapped(_full_database()), OUT_OF_RESOURCES),
        (StorageUnavailable("MongoDB unavailable: no primary"), OUT_OF_RESOURCES),
        (
            _wrapped(StorageUnavailable("embedded store unavailable: database is locked")),
            OUT_OF_RESOURCES,
        ),
        (OSError(errno.EIO, "Input/output error"), PROCESSING_FAILURE),
        (sqlite3.OperationalError("database is locked"), PROCESSING_FAILURE),
        (_wrapped(ValueError("bad")), PROCESSING_FAILURE),
    ],
)
def test_failure_reason(error: Exception, reason: int) -> None:
    assert failure_reason(error) == reason


H = InstanceHeader("1.1", "1.1.1", "1.1.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")


@pytest.mark.parametrize(
    ("result", "reason", "words"),
    [
        (StoreResult("1.1.1.1", "stored"), None, ""),
        (StoreResult("1.1.1.1", "duplicate"), None, ""),
        (StoreResult("1.1.1.1", "replaced"), None, ""),
        (StoreResult("1.1.1.1", "conflict"), 0x0111, "stored with different content"),
        (StoreResult("1.1.1.1", "other-patient"), 0xA900, "stored for another patient"),
        (
            StoreResult("1.1.1.1", "unindexable", detail="too big"),
            0xC000,
            "cannot be stored: too big",
        ),
    ],
)
def test_what_each_index_outcome_reports(
    result: StoreResult, reason: int | None, words: str
) -> None:
    refused = refusal_of(result, H)
    if reason is None:
        assert refused is None
        return
    assert refused is not None
    assert (refused.reason, refused.sop_uid, refused.sop_class_uid) == (
        reason,
        "1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.2",
    )
    assert words in refused.message


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/srv/radhub/blobs/ab/cd/x.dcm"),
        OSError(errno.EIO, "Input/output error", "/srv/radhub/blobs/staging/tmp1"),
        _wrapped(sqlite3.OperationalError("unable to open /srv/radhub/radhub.db")),
    ],
)
def test_a_fault_is_reported_without_its_own_words(error: Exception) -> None:
    """A client is told the reason and what to do, never the fault's text, which names
    server paths (the fault is logged where it happened)."""
    reported = failure(error)
    assert reported.reason == failure_reason(error)
    assert "/srv/radhub" not in reported.message and "error" not in reported.message


async def test_an_index_without_room_fails_the_batch_out_of_resources(
    store: SqliteStore, tmp_path: Path
) -> None:
    class FullIndex:
        def __getattr__(self, name: str) -> Any:
            return getattr(store.dicom, name)

        async def store_batch(self, *args: Any, **kwargs: Any) -> Any:
            raise _wrapped(_full_database())

    blobs = FileBlobStore(tmp_path / "blobs")
    service = IngestService(FullIndex(), blobs, None, IngestOptions("http://x"))  # type: ignore[arg-type]
    report = await service.ingest(stream(make_instance("1.6", "1.6.1", "1.6.1.1")))
    assert [(f.reason, f.sop_uid) for f in report.failed] == [(OUT_OF_RESOURCES, "1.6.1.1")]
    assert not [p for p in (tmp_path / "blobs").rglob("*.dcm") if p.is_file()]


def _index_outage(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's database goes away as its driver reports it: SQLite's writer finds the
    database locked, MongoDB's primary steps down; each store maps that to
    StorageUnavailable, the 503 of the FHIR API."""
    if isinstance(store, SqliteStore):
        from fhir_server.storage.sqlite import dicom_index

        def locked(*args: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(dicom_index, "store_batch", locked)
        return
    from pymongo.errors import AutoReconnect

    async def stepped_down(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("primary stepped down")

    collection = type(store._db["dicom_instances"])  # type: ignore[attr-defined]
    monkeypatch.setattr(collection, "bulk_write", stepped_down)


@pytest.mark.parametrize("kind", ["sqlite", "mongo"])
async def test_an_unavailable_database_fails_the_batch_out_of_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Whichever the store, a database that cannot be reached now fails each instance of
    the batch with 0xA700 (PS3.18's failure reason that says: send it again later), not
    0x0110, and nothing of the batch is kept."""
    store = await _store_of(kind, tmp_path)
    try:
        _index_outage(store, monkeypatch)
        blobs = FileBlobStore(tmp_path / "blobs")
        service = IngestService(store.dicom, blobs, None, IngestOptions("http://x"))
        bodies = [make_instance("1.7", "1.7.1", f"1.7.1.{i}", number=i) for i in (1, 2)]
        report = await service.ingest(stream(*bodies))
        assert report.stored == []
        assert [(f.reason, f.sop_uid) for f in report.failed] == [
            (OUT_OF_RESOURCES, "1.7.1.1"),
            (OUT_OF_RESOURCES, "1.7.1.2"),
        ]
        assert "unavailable; send it again later" in report.failed[0].message
        monkeypatch.undo()
        assert await store.dicom.instances("1.7") == []
        assert not [p for p in (tmp_path / "blobs").rglob("*.dcm") if p.is_file()]
    finally:
        await store.close()


async def _store_of(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite":
        made: Store = SqliteStore(tmp_path / "db", SearchRegistry.load())
    else:
        from mongomock_motor import AsyncMongoMockClient

        from fhir_server.storage.mongo.store import MongoStore

        made = MongoStore(AsyncMongoMockClient(), "radhub", SearchRegistry.load())
    await made.start()
    return made


async def test_a_failed_staging_write_fails_the_batch_and_keeps_nothing(
    store: SqliteStore, tmp_path: Path
) -> None:
    """A part whose file cannot be written (a full disk) fails its batch, each
    instance Out of Resources (0xA700: try later or elsewhere); the request goes on."""

    class FullDisk(FileBlobStore):
        opened = 0

        def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
            self.opened += 1
            if self.opened == 2:
                raise OSError(28, "No space left on device")
            return super()._open_temporary(directory)

    blobs = FullDisk(tmp_path / "blobs")
    service = IngestService(store.dicom, blobs, None, IngestOptions("http://x"))
    good = [make_instance("1.5", "1.5.1", f"1.5.1.{i}") for i in range(3)]
    report = await service.ingest(stream(*good))
    assert report.stored == []
    assert [f.reason for f in report.failed] == [OUT_OF_RESOURCES] * 3
    assert "out of room" in report.failed[1].message
    assert await store.dicom.instances("1.5") == []
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def test_a_refusal_survives_the_trip_from_a_worker_process() -> None:
    refused = pickle.loads(pickle.dumps(InstanceRejected(0xC000, "not a DICOM Part-10 file")))
    assert (refused.reason, refused.message) == (0xC000, "not a DICOM Part-10 file")


async def test_overwrite_replaces_and_removes_the_old_blob(
    store: SqliteStore, tmp_path: Path
) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    service = IngestService(store.dicom, blobs, None, IngestOptions("http://x", overwrite=True))
    await service.ingest(stream(make_instance("1.2", "1.2.1", "1.2.1.1")))
    (before,) = await blobs.keys()
    report = await service.ingest(stream(make_instance("1.2", "1.2.1", "1.2.1.1", name="New^Name")))
    assert [type(s) for s in report.stored] == [Stored]
    (after,) = await blobs.keys()
    assert after != before
    (row,) = await store.dicom.instances("1.2")
    assert row.blob.key == after


async def test_imaging_study_is_searchable_once_ingest_settles(app: FastAPI, client: Any) -> None:
    service = app.state.dicomweb.ingest
    acsn = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
    subject = await study_patient(client, "MRN9")
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": subject},
        "identifier": [{"type": acsn, "value": "ACC-9"}],
    }
    created = await client.post("/fhir/ServiceRequest", json=order)
    assert created.status_code == 201
    await service.ingest(
        stream(make_instance("7.7", "7.7.1", "7.7.1.1", accession="ACC-9", patient_id="MRN9"))
    )
    await settled(app)
    found = (
        await client.get("/fhir/ImagingStudy", params={"identifier": "urn:dicom:uid|urn:oid:7.7"})
    ).json()
    (entry,) = found["entry"]
    study = entry["resource"]
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{created.json()['id']}"}]
    patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
    assert patient["identifier"][0]["value"] == "MRN9"
    by_patient = (
        await client.get("/fhir/ImagingStudy", params={"subject": study["subject"]["reference"]})
    ).json()
    assert [e["resource"]["id"] for e in by_patient["entry"]] == ["7.7"]


async def test_a_study_with_impossible_dates_still_gets_its_imaging_study(
    app: FastAPI, client: Any
) -> None:
    """A date, time or zone that is none (all zeros for an unknown birth date is
    common) is left out: the ImagingStudy and the Patient are written without it,
    rather than refused by the FHIR validation and retried for ever."""
    body = with_values(
        make_instance("7.8", "7.8.1", "7.8.1.1", patient_id="MRN-0", date="20240105"),
        PatientBirthDate="00000000",
        SeriesDate="20241340",
        SeriesTime="101500",
        StudyTime="256199",
        TimezoneOffsetFromUTC="+9999",
    )
    await app.state.dicomweb.ingest.ingest(stream(body))
    await settled(app)
    study = (await client.get("/fhir/ImagingStudy/7.8")).json()
    assert study["started"] == "2024-01-05"
    assert "started" not in study["series"][0]
    patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
    assert patient["identifier"][0]["value"] == "MRN-0" and "birthDate" not in patient


def _row(uid: str, series: str, number: int | None) -> InstanceRow:
    attrs = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}
    return InstanceRow(
        uid, series, "1.2", attrs, BlobLocation("k", 1, "s"), "1.2.840.10008.1.2.1", number, {}
    )


STUDY = StudyRow(
    "1.2",
    {
        "00080050": {"vr": "SH", "Value": ["ACC"]},
        "00080020": {"vr": "DA", "Value": ["20240105"]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "House^Gregory^^Dr."}]},
    },
    ("CT",), 1, 2, "p1",
)  # fmt: skip
SERIES = SeriesRow(
    "1.2.1",
    "1.2",
    {
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00200060": {"vr": "CS", "Value": ["L"]},
        "00180015": {"vr": "CS", "Value": ["KNEE"]},
        "00080021": {"vr": "DA", "Value": ["20240105"]},
        "00080031": {"vr": "TM", "Value": ["101502"]},
        "00080201": {"vr": "SH", "Value": ["+0100"]},
    },
    2,
    1,
)


@pytest.mark.parametrize(
    ("links", "path", "expected"),
    [
        (StudyLinks("Patient/p1"), ("identifier", 0, "value"), "urn:oid:1.2"),
        (StudyLinks("Patient/p1"), ("identifier", 1, "type", "coding", 0, "code"), "ACSN"),
        (StudyLinks("Patient/p1"), ("subject", "reference"), "Patient/p1"),
        (
            StudyLinks("Patient/p1", "ServiceRequest/s"),
            ("basedOn", 0, "reference"),
            "ServiceRequest/s",
        ),
        (
            StudyLinks("Patient/p1", None, "Endpoint/e"),
            ("series", 0, "endpoint", 0, "reference"),
            "Endpoint/e",
        ),
        (StudyLinks("Patient/p1"), ("series", 0, "laterality", "code"), "7771000"),
        (StudyLinks("Patient/p1"), ("series", 0, "bodySite", "code"), "72696002"),
        (StudyLinks("Patient/p1"), ("series", 0, "started"), "2024-01-05T10:15:02+01:00"),
        (StudyLinks("Patient/p1"), ("series", 0, "instance", 1, "number"), 2),
        (StudyLinks("Patient/p1"), ("started",), "2024-01-05"),
        (StudyLinks("Patient/p1"), ("numberOfInstances",), 2),
        (StudyLinks("Patient/p1"), ("referrer",), {"display": "Dr. Gregory House"}),
    ],
)
def test_map_study(links: StudyLinks, path: tuple[Any, ...], expected: Any) -> None:
    value: Any = map_study(
        STUDY, [SERIES], [_row("1.2.1.1", "1.2.1", 1), _row("1.2.1.2", "1.2.1", 2)], links
    )
    for step in path:
        value = value[step]
    assert value == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ({"Alphabetic": "House^Gregory^^Dr."}, "Dr. Gregory House"),
        ({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, "Tarou Yamada"),
        ({"Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}, "太郎 山田"),
        ({"Phonetic": "やまだ^たろう"}, "たろう やまだ"),
        ({"Alphabetic": "", "Ideographic": "홍^길동"}, "길동 홍"),
        ({"Alphabetic": "  "}, None),
        ({}, None),
    ],
)
def test_the_referrer_is_named_by_the_first_group_that_has_a_name(
    name: dict[str, str], expected: str | None
) -> None:
    study = replace(STUDY, attrs={**STUDY.attrs, "00080090": {"vr": "PN", "Value": [name]}})
    rows = [_row("1.2.1.1", "1.2.1", 1)]
    mapped = map_study(study, [SERIES], rows, StudyLinks("Patient/p1"))
    assert mapped.get("referrer") == (None if expected is None else {"display": expected})


def test_what_the_archive_writes_is_what_it_owns() -> None:
    """Every element ``map_study`` writes is one ``with_client_elements`` takes from the
    images, never from the stored version: else an element the mapping gains later
    would keep a FHIR client's stale value over the images'."""
    links = StudyLinks("Patient/p1", "ServiceRequest/s", "Endpoint/e")
    rows = [_row("1.2.1.1", "1.2.1", 1), _row("1.2.1.2", "1.2.1", 2)]
    mapped = map_study(STUDY, [SERIES], rows, links)
    assert {"basedOn", "endpoint", "referrer", "started", "series"} <= set(mapped)
    assert set(mapped) <= ARCHIVE_ELEMENTS
    stored = {**mapped, "numberOfSeries": 9, "note": [{"text": "read by Dr X"}]}
    assert with_client_elements(mapped, stored) == {**mapped, "note": stored["note"]}


BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("20240105", "101500", "+0100"), "2024-01-05T10:15:00+01:00"),
        (("20240105", "1015", "-0500"), "2024-01-05T10:15:00-05:00"),
        (("20240105", "101500", None), "2024-01-05"),
        (("2024", None, None), None),
        # the form before DICOM 3.0, which PS3.5 6.2 asks readers to accept
        (("20240105", "10:15:02.5", "+0100"), "2024-01-05T10:15:02.5+01:00"),
        # no offset sent: the site's zone's, summer time included
        (("20240105", "101500", None, BERLIN), "2024-01-05T10:15:00+01:00"),
        (("20240705", "101500.123456", None, BERLIN), "2024-07-05T10:15:00.123456+02:00"),
        (("20240105", "0930", None, NEW_YORK), "2024-01-05T09:30:00-05:00"),
        (("20240105", "101500", "+0530", BERLIN), "2024-01-05T10:15:00+05:30"),  # sent wins
        (("20240105", "101500", "+9999", BERLIN), "2024-01-05"),  # a wrong one: no time
        (("20240105", "256199", None, BERLIN), "2024-01-05"),
        (("20240105", "101560", "+1400"), "2024-01-05T10:15:60+14:00"),  # a leap second
        # not a date, time or offset at all (seen in the wild): the part that is one
        (("00000000", "101500", "+0100"), None),
        (("20241340", "101500", "+0100"), None),
        (("20230229", None, None), None),
        (("2024O105", None, None), None),
        (("20240105", "256199", "+0100"), "2024-01-05"),
        (("20240105", "1075", "+0100"), "2024-01-05"),
        (("20240105", "101500", "+9999"), "2024-01-05"),
        (("20240105", "101500", "+1430"), "2024-01-05"),
        (("20240105", "101500", "01000"), "2024-01-05"),
    ],
)
def test_fhir_started(args: tuple[Any, ...], expected: str | None) -> None:
    assert fhir_started(*args) == expected


@pytest.mark.parametrize(
    ("issuer", "system"),
    [
        ("urn:oid:1.2.3", "urn:oid:1.2.3"),
        ("http://hospital.example/mrn", "http://hospital.example/mrn"),
        ("1.2.840.113619", "urn:oid:1.2.840.113619"),
        ("HOSP_A", "urn:radhub:issuer:HOSP_A"),
        ("St Mary's/North", "urn:radhub:issuer:St%20Mary%27s%2FNorth"),
        ("1.2.", "urn:radhub:issuer:1.2."),  # not an OID
        # a colon does not make a URI: FHIR's uri holds no white space
        ("Main Hospital: East", "urn:radhub:issuer:Main%20Hospital%3A%20East"),
        ("1.2.3:4", "urn:radhub:issuer:1.2.3%3A4"),  # nor one with no scheme
        ("MAPPED", "http://mapped.example/mrn"),
        (None, "urn:d"),
        ("  ", "urn:d"),
    ],
)
def test_patient_identifier_system(issuer: str | None, system: str) -> None:
    attrs: dict[str, Any] = {"00100020": {"vr": "LO", "Value": ["M1"]}}
    if issuer is not None:
        attrs["00100021"] = {"vr": "LO", "Value": [issuer]}
    namespaces = PatientNamespaces("urn:d", {"MAPPED": "http://mapped.example/mrn"})
    assert patient_identifier(attrs, namespaces) == (system, "M1")


@pytest.mark.parametrize(
    ("tag", "levels"),
    [
        ("00080020", {"study"}),  # StudyDate
        ("00100021", {"study"}),  # IssuerOfPatientID, an extra kept for ImagingStudy
        ("00080060", {"series"}),  # Modality
        ("00180015", {"series"}),  # BodyPartExamined
        ("00080018", {"instance"}),  # SOPInstanceUID
        ("00280010", {"instance"}),  # Rows: not in PS3.18's tables
        ("00080201", {"study", "series", "instance"}),  # TimezoneOffsetFromUTC: all three
        ("00080070", {"series", "instance"}),  # Manufacturer: General Equipment, a series'
        ("00081060", {"study", "instance"}),  # NameOfPhysiciansReadingStudy: a study's
    ],
)
def test_each_attribute_is_kept_at_its_levels(tag: str, levels: set[str]) -> None:
    element = {"vr": "SH", "Value": ["x"]}
    split = split_levels({tag: element, "7FE00010": {"vr": "OW", "BulkDataURI": "u"}})
    assert {level for level, attrs in split.items() if tag in attrs} == levels
    assert all("7FE00010" not in attrs for attrs in split.values())  # bulk data: none


def _series_row(uid: str, number: int | None) -> SeriesRow:
    attrs = {"00080060": {"vr": "CS", "Value": ["CT"]}}
    if number is not None:
        attrs["00200011"] = {"vr": "IS", "Value": [number]}
    return SeriesRow(uid, "1.2", attrs, 1, 1)


def test_series_and_instances_come_in_number_order() -> None:
    # numbers compare as numbers (2 before 10); the unnumbered come last, by UID
    series = [_series_row("1.2.9", 10), _series_row("1.2.8", None), _series_row("1.2.7", 2)]
    instances = [
        _row("1.2.7.5", "1.2.7", 10),
        _row("1.2.7.4", "1.2.7", None),
        _row("1.2.7.3", "1.2.7", 2),
        _row("1.2.7.2", "1.2.7", None),
    ]
    study = map_study(STUDY, series, instances, StudyLinks("Patient/p1"))
    assert [s["uid"] for s in study["series"]] == ["1.2.7", "1.2.9", "1.2.8"]
    first_series = study["series"][0]["instance"]
    assert [i["uid"] for i in first_series] == ["1.2.7.3", "1.2.7.5", "1.2.7.2", "1.2.7.4"]


def _code_item(**values: str) -> dict[str, Any]:
    tags = {"value": "00080100", "scheme": "00080102", "meaning": "00080104", "urn": "00080120"}
    tags["long"] = "00080119"
    return {tags[k]: {"vr": "SH", "Value": [v]} for k, v in values.items()}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            _code_item(value="24627-2", scheme="LN", meaning="CT Chest"),
            {
                "coding": [
                    {"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}
                ],
                "text": "CT Chest",
            },
        ),
        (
            _code_item(value="77477000", scheme="SCT"),
            {"coding": [{"system": "http://snomed.info/sct", "code": "77477000"}]},
        ),
        # SNOMED RT identifiers are not SNOMED CT codes: no system claimed
        (
            _code_item(value="P5-08000", scheme="SRT", meaning="CT"),
            {"coding": [{"code": "P5-08000", "display": "CT"}], "text": "CT"},
        ),
        (
            _code_item(value="CTCHEST1", scheme="99LOCAL", meaning="Chest CT"),
            {"coding": [{"code": "CTCHEST1", "display": "Chest CT"}], "text": "Chest CT"},
        ),
        (
            _code_item(long="A-VERY-LONG-LOCAL-CODE-VALUE-OVER-16", scheme="99LOCAL"),
            {"coding": [{"code": "A-VERY-LONG-LOCAL-CODE-VALUE-OVER-16"}]},
        ),
        (
            _code_item(urn="urn:oid:1.2.3.4", meaning="x"),
            {
                "coding": [
                    {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.3.4", "display": "x"}
                ],
                "text": "x",
            },
        ),
        (_code_item(meaning="no code at all"), None),
    ],
)
def test_coded_concept(item: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert coded_concept(item) == expected


@pytest.mark.parametrize(
    ("pn", "human", "text"),
    [
        ("Doe^Jane", {"family": "Doe", "given": ["Jane"]}, "Jane Doe"),
        (
            "Adams^John Robert Quincy^^Rev.^B.A. M.Div.",
            {
                "family": "Adams",
                "given": ["John Robert Quincy"],
                "prefix": ["Rev."],
                "suffix": ["B.A. M.Div."],
            },
            "Rev. John Robert Quincy Adams B.A. M.Div.",
        ),
        (
            "Morrison-Jones^Susan^Ann",
            {"family": "Morrison-Jones", "given": ["Susan", "Ann"]},
            "Susan Ann Morrison-Jones",
        ),
        ("^^^Dr.", {"prefix": ["Dr."]}, "Dr."),
        ("Wang^XiaoDong^^^", {"family": "Wang", "given": ["XiaoDong"]}, "XiaoDong Wang"),
        ("^^^^", {}, ""),
    ],
)
def test_human_name(pn: str, human: dict[str, Any], text: str) -> None:
    # PS3.5 6.2.1.1's examples and edge cases: empty components leave nothing behind
    assert human_name(pn) == human
    assert name_text(human) == text


def test_map_patient_from_the_dicom_demographics() -> None:
    attrs = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna^^Dr."}]},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "00100030": {"vr": "DA", "Value": ["19700131"]},
    }
    assert map_patient(attrs, "urn:oid:1.2.3", "MRN1") == {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
        "name": [{"family": "Müller", "given": ["Anna"], "prefix": ["Dr."]}],
        "gender": "female",
        "birthDate": "1970-01-31",
    }
    assert "name" not in map_patient(
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "^^"}]}}, "s", "v"
    )
    # 00000000 is a common "unknown" in the wild; it is no birth date
    unknown = {"00100030": {"vr": "DA", "Value": ["00000000"]}}
    assert "birthDate" not in map_patient(unknown, "s", "v")


def test_every_group_of_a_person_name_is_a_human_name() -> None:
    """PS3.5 H.3.1's example: alphabetic, ideographic and phonetic groups."""
    japanese = {
        "Alphabetic": "Yamada^Tarou",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }
    attrs = {"00100010": {"vr": "PN", "Value": [japanese]}}

    def script(code: str) -> list[dict[str, str]]:
        return [{"url": EN_REPRESENTATION, "valueCode": code}]

    assert map_patient(attrs, "s", "v")["name"] == [
        {"family": "Yamada", "given": ["Tarou"]},
        {"family": "山田", "given": ["太郎"], "extension": script("IDE")},
        {"family": "やまだ", "given": ["たろう"], "extension": script("SYL")},
    ]
    only_kanji = {"00100010": {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}}
    assert map_patient(only_kanji, "s", "v")["name"] == [
        {"family": "山田", "given": ["太郎"], "extension": script("IDE")}
    ]


def _with_uv_beyond_64_bits(body: bytes) -> bytes:
    """``body`` with a private UV value of 2**64 - 5 (no MongoDB integer holds it)."""
    ds = pydicom.dcmread(io.BytesIO(body))
    ds.add_new(0x00091010, "LO", "VENDOR")
    ds.add_new(0x00091011, "UV", 2**64 - 5)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_a_uv_beyond_what_json_holds_is_stored_on_mongodb(tmp_path: Path) -> None:
    """On MongoDB (the emulator), which holds no integer above 2^63 - 1: a UV of
    2^64 - 5 is indexed as the string DICOM JSON writes it (PS3.18 §F.2.3.1) and the
    instance is stored, beside an ordinary one. (An instance the index still cannot
    hold is refused alone: tests/contract/test_mongo_dicom_index.py.)"""
    from mongomock_motor import AsyncMongoMockClient

    from fhir_server.storage.mongo.store import MongoStore

    store = MongoStore(AsyncMongoMockClient(), "radhub", SearchRegistry.load())
    await store.start()
    blobs = FileBlobStore(tmp_path / "blobs")
    service = IngestService(store.dicom, blobs, None, IngestOptions("http://x"))
    good = make_instance("1.8", "1.8.1", "1.8.1.1")
    wide = _with_uv_beyond_64_bits(make_instance("1.8", "1.8.1", "1.8.1.2", number=2))
    report = await service.ingest(stream(good, wide))
    assert report.failed == []
    assert [s.sop_uid for s in report.stored] == ["1.8.1.1", "1.8.1.2"]
    (meta,) = await store.dicom.metadata("1.8", "1.8.1", "1.8.1.2")
    assert orjson.loads(meta)["00091011"] == {"vr": "UV", "Value": [str(2**64 - 5)]}
    assert len(await store.dicom.instance_files("1.8")) == 2


def _enhanced_ct(frames: int) -> bytes:
    """A multi-frame CT with the functional groups an enhanced CT carries per frame
    (frame content, plane position, VOI LUT, pixel value transformation, CT exposure)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance("2.9", "2.9.1", "2.9.1.1", frames=frames)))

    def item(**values: Any) -> Dataset:
        made = Dataset()
        for keyword, value in values.items():
            setattr(made, keyword, value)
        return made

    def group(i: int) -> Dataset:
        return item(
            FrameContentSequence=[
                item(FrameAcquisitionNumber=i + 1, StackID="1", InStackPositionNumber=i + 1,
                     FrameAcquisitionDateTime="20240101101010.123456",
                     FrameReferenceDateTime="20240101101010.123456",
                     FrameAcquisitionDuration=500.0, DimensionIndexValues=[1, i + 1],
                     TemporalPositionIndex=1)
            ],
            PlanePositionSequence=[item(ImagePositionPatient=[-250.0, -250.0, -0.625 * i])],
            FrameVOILUTSequence=[
                item(WindowCenter=40, WindowWidth=400, WindowCenterWidthExplanation="SOFT TISSUE")
            ],
            PixelValueTransformationSequence=[
                item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")
            ],
            CTExposureSequence=[
                item(ExposureTimeInms=500.0, XRayTubeCurrentInmA=250.0, ExposureInmAs=125.0,
                     CTDIvol=12.34)
            ],
        )  # fmt: skip

    ds.PerFrameFunctionalGroupsSequence = [group(i) for i in range(frames)]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_an_enhanced_ct_of_8000_frames_is_stored_on_mongodb(tmp_path: Path) -> None:
    """Its instance-level DICOM JSON is ~9.8 MB and its metadata ~7.8 MB: together past
    the 16 MiB of one MongoDB document, so the metadata is kept in chunks beside it;
    WADO-RS metadata reads it back whole (on the emulator, measured with the real BSON
    encoder)."""
    from mongomock_motor import AsyncMongoMockClient

    from fhir_server.storage.mongo.store import MongoStore

    store = MongoStore(AsyncMongoMockClient(), "radhub", SearchRegistry.load())
    await store.start()
    body = _enhanced_ct(8000)
    expected = describe_instance(body, "http://x").record.metadata
    service = IngestService(
        store.dicom, FileBlobStore(tmp_path / "blobs"), None, IngestOptions("http://x")
    )
    report = await service.ingest(stream(body))
    assert [s.sop_uid for s in report.stored] == ["2.9.1.1"] and report.failed == []
    (doc,) = await store._db["dicom_instances"].find({}).to_list(None)
    assert len(bson.encode(doc)) + len(expected) > 16 * 1024 * 1024 > len(bson.encode(doc))
    assert await store.dicom.metadata("2.9") == [expected]
