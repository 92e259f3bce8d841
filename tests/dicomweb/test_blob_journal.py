"""Start-up reconciliation of the blob store with the index (``dicomweb.blob_journal``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dicomweb.blob_journal import IntentJournal, ReconcileReport, reconcile
from dicomweb.blobstore import FileBlobStore
from dicomweb.ingest import IngestOptions, IngestService
from fhir_server.app import create_app
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore
from tests.dicomweb.dicom_data import make_instance


async def one(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def bodies(*items: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
    for item in items:
        yield one(item)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    made = SqliteStore(tmp_path / "db", SearchRegistry.load())
    await made.start()
    yield made
    await made.close()


def parts(tmp_path: Path, store: SqliteStore) -> tuple[FileBlobStore, IntentJournal, IngestService]:
    blobs = FileBlobStore(tmp_path / "blobs", fsync=False)
    journal = IntentJournal(blobs.root, fsync=False)
    ingest = IngestService(store.dicom, blobs, None, IngestOptions("http://x"), journal)
    return blobs, journal, ingest


async def test_abandoned_intent_and_temporaries_are_reconciled(
    tmp_path: Path, store: SqliteStore
) -> None:
    blobs, journal, ingest = parts(tmp_path, store)
    kept = make_instance("1.2", "1.2.1", "1.2.1.1")
    assert len((await ingest.ingest(bodies(kept))).stored) == 1
    # a writer that died after adopting two blobs but before its index commit: one an
    # identical re-send of the stored instance (same key), one new
    uids = [("1.2", "1.2.1", "1.2.1.1"), ("1.2", "1.2.1", "1.2.1.2")]
    path, fd = journal._create(orjson.dumps(uids))
    for (study, series, sop), body in zip(uids, (kept, b"orphan"), strict=True):
        staged = await blobs.stage(one(body))
        await blobs.adopt(staged, study, series, sop)
    os.close(fd)  # the process is gone: its lock with it, the intent stays
    await blobs.stage(one(b"half"))  # an interrupted staging: a .tmp- file
    assert len(await blobs.keys()) == 2
    report = await reconcile(store.dicom, blobs, journal)
    assert (report.intents, report.orphans, report.temporaries) == (1, 1, 1)
    (row,) = await store.dicom.instances("1.2")
    assert await blobs.keys() == [row.blob.key]
    assert not path.exists()
    assert not list(blobs.root.rglob(".tmp-*"))
    assert await reconcile(store.dicom, blobs, journal) == type(report)()  # nothing left


async def test_a_live_intent_and_young_temporaries_are_left_alone(
    tmp_path: Path, store: SqliteStore
) -> None:
    blobs, journal, _ = parts(tmp_path, store)
    async with journal.intent([("1.2", "1.2.1", "1.2.1.9")]):
        staged = await blobs.stage(one(b"in flight"))
        await blobs.adopt(staged, "1.2", "1.2.1", "1.2.1.9")
        await blobs.stage(one(b"being written"))
        report = await reconcile(store.dicom, blobs, journal, temp_grace=3600)
        assert (report.intents, report.orphans, report.temporaries) == (0, 0, 0)
        assert len(await blobs.keys()) == 1
    (kept,) = (blobs.root / ".intents").iterdir()
    assert kept.stat().st_size == 0  # withdrawn, and kept (locked) for the next intent


async def test_intent_files_are_reused_and_a_stopped_process_leaves_none_behind(
    tmp_path: Path, store: SqliteStore
) -> None:
    """A removed intent file left a freed inode for ext4 to skip at every later file
    creation; so one file serves intent after intent, emptied in between."""
    blobs, journal, _ = parts(tmp_path, store)
    intents = blobs.root / ".intents"
    async with journal.intent([("1.2", "1.2.1", "1.2.1.1")]):
        (first,) = intents.iterdir()
        inode = first.stat().st_ino
        async with journal.intent([("1.2", "1.2.1", "1.2.1.2")]):
            assert len(list(intents.iterdir())) == 2  # concurrent intents: a file each
    async with journal.intent([("1.3", "1.3.1", "1.3.1.1")]):
        assert {p.stat().st_ino for p in intents.iterdir()} >= {inode}
        assert len(list(intents.iterdir())) == 2
        reused = [p for p in intents.iterdir() if p.stat().st_size > 0]
        assert [orjson.loads(p.read_bytes()) for p in reused] == [[["1.3", "1.3.1", "1.3.1.1"]]]
    for slot in journal._idle:  # the process ends: its locks go, its files stay
        os.close(slot.fd)
    report = await reconcile(store.dicom, blobs, IntentJournal(blobs.root, fsync=False))
    assert report == ReconcileReport()  # withdrawn intents are not an unclean stop
    assert list(intents.iterdir()) == []


async def test_a_batch_the_index_refuses_leaves_no_blob(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs, journal, ingest = parts(tmp_path, store)
    first = make_instance("1.2", "1.2.1", "1.2.1.1")
    assert len((await ingest.ingest(bodies(first))).stored) == 1

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.dicom, "store_batch", broken)
    report = await ingest.ingest(bodies(first, make_instance("1.2", "1.2.1", "1.2.1.2")))
    assert [f.reason for f in report.failed] == [0x0110, 0x0110]
    (row,) = await store.dicom.instances("1.2")
    assert await blobs.keys() == [row.blob.key]  # the stored instance's blob survives


async def test_an_aborted_request_leaves_no_staged_file(tmp_path: Path, store: SqliteStore) -> None:
    blobs, _, ingest = parts(tmp_path, store)

    async def aborted() -> AsyncIterator[AsyncIterator[bytes]]:
        yield one(make_instance("1.2", "1.2.1", "1.2.1.1"))
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await ingest.ingest(aborted())
    assert await blobs.keys() == []
    assert not list(blobs.root.rglob(".tmp-*"))


async def test_the_app_reconciles_at_start_up(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", base_url="http://radhub.test", audit_process=False
    )
    blobs = FileBlobStore(settings.data_dir / "blobs", fsync=False)
    orphan = await blobs.adopt(await blobs.stage(one(b"orphan")), "1.2", "1.2.1", "1.2.1.1")
    _, fd = IntentJournal(blobs.root, fsync=False)._create(b'[["1.2", "1.2.1", "1.2.1.1"]]')
    os.close(fd)
    await blobs.stage(one(b"half"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert not await blobs.exists(orphan.key)
        assert await blobs.keys() == []
        assert not list(blobs.root.rglob(".tmp-*"))
        assert not list((blobs.root / ".intents").iterdir())


async def test_a_failed_overwrite_keeps_the_file_the_index_named_before(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index that is not all-or-nothing (MongoDB's) may fail an overwrite after it
    dropped the stored row: the failure path must not then remove the stored file,
    the only copy of that instance left."""
    blobs = FileBlobStore(tmp_path / "blobs", fsync=False)
    options = IngestOptions("http://x", overwrite=True)
    ingest = IngestService(store.dicom, blobs, None, options, IntentJournal(blobs.root))
    assert len((await ingest.ingest(bodies(make_instance("1.2", "1.2.1", "1.2.1.1")))).stored) == 1
    (stored,) = await blobs.keys()

    async def half_done(*args: Any, **kwargs: Any) -> Any:
        await store.dicom.delete("1.2", "1.2.1", "1.2.1.1")
        raise RuntimeError("the new version could not be written")

    monkeypatch.setattr(store.dicom, "store_batch", half_done)
    new = make_instance("1.2", "1.2.1", "1.2.1.1", name="New^Name")
    report = await ingest.ingest(bodies(new))
    assert [f.reason for f in report.failed] == [0x0110]
    assert await blobs.keys() == [stored]  # the new file went, the stored one stayed
