"""ArchiveLocks across processes: servers sharing one blob store (MongoDB) exclude
each other's STOW-RS batches and DELETEs of one study through flock files, a
dead holder's lock goes with it, and the wiring gives a MongoDB archive such
locks (the embedded store's, one process, keeps them in memory)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient

from dicomweb.archive_locks import ArchiveLocks
from dicomweb.blob_journal import IntentJournal
from dicomweb.blobstore import FileBlobStore
from dicomweb.ingest import IngestOptions, IngestService
from dicomweb.retrievals_in_flight import RetrievalsInFlight
from dicomweb.shared_locks import LOCK_DIR, FileLocks, stripe
from fhir_server.errors import StorageUnavailable
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.dicom_port import DicomIndex
from fhir_server.storage.mongo.store import MongoStore
from tests.dicomweb.archive_app import DEADLINE, fast_settings, running
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart
from tests.dicomweb.test_archive_locks import Probe
from tests.dicomweb.test_ingest import stream

QUIET = 0.3  # seconds in which a holder that could get in would have


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def server(tmp_path: Path) -> ArchiveLocks:
    """One server's locks on the shared blob store (its own open files, as another
    process has: an flock is per open file)."""
    return ArchiveLocks(FileLocks(tmp_path / LOCK_DIR))


@pytest.mark.parametrize(
    ("uid", "expected"),
    [("1.2.3", "c47"), ("1.2.840.10008.5.1.4.1.1.2", "5ec"), ("", "e3b")],
)
def test_a_stripe_is_a_prefix_of_the_uids_sha256(uid: str, expected: str) -> None:
    assert stripe(uid) == expected


async def test_a_delete_on_one_server_waits_for_a_batch_on_another(tmp_path: Path) -> None:
    one, other = server(tmp_path), server(tmp_path)
    log: list[str] = []
    batch = Probe(lambda: one.storing(["S"], ["1"]), log, "batch")
    await until(lambda: log == ["batch"], "the batch")
    delete = Probe(lambda: other.removing("S"), log, "delete")
    unrelated = Probe(lambda: other.storing(["T"], ["2"]), log, "other study")
    await until(lambda: "other study" in log, "a batch into another study")
    await asyncio.sleep(QUIET)
    assert "delete" not in log
    await batch.leave()
    await until(lambda: "delete" in log, "the DELETE once the batch is done")
    await delete.leave()
    await unrelated.leave()
    assert one.busy() == other.busy() == 0


async def test_batches_on_two_servers_share_a_study_and_hold_no_instance_files(
    tmp_path: Path,
) -> None:
    """Across servers only a study is locked: batches of other studies never take
    turns on stripes their instances share, and a batch of many instances holds one
    lock file, not one per instance. Within a server an instance is still its
    batch's alone."""
    one, other = server(tmp_path), server(tmp_path)
    log: list[str] = []
    sops = [str(n) for n in range(100)]
    first = Probe(lambda: one.storing(["S"], sops), log, "first")
    await until(lambda: log == ["first"], "the first batch")
    sharing = Probe(lambda: other.storing(["S"], ["2", "100"]), log, "other server")
    await until(lambda: "other server" in log, "the other server's batch into the study")
    assert sorted(p.name for p in (tmp_path / LOCK_DIR).iterdir()) == [f"s-{stripe('S')}"]
    same_server = Probe(lambda: one.storing(["S"], ["2"]), log, "same server, instance 2")
    await asyncio.sleep(QUIET)
    assert "same server, instance 2" not in log
    await first.leave()
    await until(lambda: "same server, instance 2" in log, "instance 2's turn")
    await sharing.leave()
    await same_server.leave()


async def test_a_killed_holder_leaves_no_lock_behind(tmp_path: Path) -> None:
    """A server killed (SIGKILL) while it deletes a study: the kernel lets go of its
    lock, so the others' batches into that study go on."""
    ready = tmp_path / "holding"
    code = (
        "import asyncio, sys, pathlib\n"
        "from dicomweb.archive_locks import ArchiveLocks\n"
        "from dicomweb.shared_locks import FileLocks\n"
        "async def main():\n"
        f"    locks = ArchiveLocks(FileLocks(pathlib.Path({str(tmp_path / LOCK_DIR)!r})))\n"
        "    async with locks.removing('S'):\n"
        f"        pathlib.Path({str(ready)!r}).touch()\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": "."})
    try:
        await until(ready.exists, "the other process to hold the study")
        log: list[str] = []
        batch = Probe(lambda: server(tmp_path).storing(["S"], ["1"]), log, "batch")
        await asyncio.sleep(QUIET)
        assert log == []
        os.kill(holder.pid, signal.SIGKILL)
        await until(lambda: log == ["batch"], "the batch once the holder is dead")
        await batch.leave()
    finally:
        holder.kill()
        holder.wait()


async def test_a_mongodb_archive_excludes_across_servers_on_its_blob_store(
    tmp_path: Path,
) -> None:
    """Two servers on one MongoDB database and one data dir: a STOW-RS into a study
    the other is deleting waits for that DELETE, then stores."""
    settings = fast_settings(tmp_path / "data")
    client = AsyncMongoMockClient()
    registry = SearchRegistry.load().with_base_url(settings.fhir_base)

    def store() -> MongoStore:
        return MongoStore(client, "radhub_archive", registry)

    async with running(settings, store()) as (one, _), running(settings, store()) as (_, other):
        body = multipart(make_instance("7.1", "7.1.1", "7.1.1.1"))
        stow = None
        async with one.state.dicomweb.ingest.locks.removing("7.1"):
            stow = asyncio.create_task(
                other.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
            )
            await asyncio.sleep(QUIET)
            assert not stow.done(), "the STOW did not wait for the other server's DELETE"
        stored = await asyncio.wait_for(stow, DEADLINE)
        assert stored.status_code == 200, stored.text
        assert (tmp_path / "data" / "blobs" / LOCK_DIR / f"s-{stripe('7.1')}").is_file()


async def test_the_embedded_stores_archive_keeps_its_locks_in_memory(tmp_path: Path) -> None:
    async with running(fast_settings(tmp_path / "data")) as (_, client):
        body = multipart(make_instance("7.2", "7.2.1", "7.2.1.1"))
        stored = await client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200
    assert not (tmp_path / "data" / "blobs" / LOCK_DIR).exists()


def flights(tmp_path: Path) -> RetrievalsInFlight:
    """One server's retrievals in flight, on the shared blob store's locks."""
    return RetrievalsInFlight(FileLocks(tmp_path / LOCK_DIR))


async def test_a_delete_on_one_server_waits_for_a_retrieval_on_another(tmp_path: Path) -> None:
    reading, deleting = flights(tmp_path), flights(tmp_path)
    first, second = reading.hold("S"), reading.hold("S")
    waiting = asyncio.create_task(deleting.settled("S", DEADLINE))
    first.release()
    await asyncio.sleep(QUIET)
    assert not waiting.done()  # the other server's second retrieval is still sending
    second.release()
    assert await asyncio.wait_for(waiting, DEADLINE)
    assert await asyncio.wait_for(deleting.settled("S", 0.0), DEADLINE)  # none: at once


async def test_a_delete_waits_for_another_servers_retrieval_no_longer_than_its_grace(
    tmp_path: Path,
) -> None:
    reading, deleting = flights(tmp_path), flights(tmp_path)
    held = reading.hold("S")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await deleting.settled("S", 0.2)
    assert loop.time() - started >= 0.2
    assert await asyncio.wait_for(deleting.settled("T", 0.0), DEADLINE)  # another study
    held.release()
    assert await asyncio.wait_for(deleting.settled("S", DEADLINE), DEADLINE)
    assert reading.busy() == 0


async def test_a_mongodb_archives_retrievals_hold_their_studys_lock(tmp_path: Path) -> None:
    """The wiring: a MongoDB archive's retrievals take the lock another server's
    DELETE waits on (the counting itself is tested through HTTP in
    ``test_wado_delete_race``)."""
    settings = fast_settings(tmp_path / "data")
    store = MongoStore(AsyncMongoMockClient(), "radhub_archive", SearchRegistry.load())
    async with running(settings, store) as (app, _):
        other = flights(tmp_path / "data" / "blobs")
        retrieval = app.state.dicomweb.retrievals.hold("7.3")
        assert not await other.settled("7.3", 0.1)  # in flight on the first server
        retrieval.release()
        assert await asyncio.wait_for(other.settled("7.3", DEADLINE), DEADLINE)


async def test_a_study_whose_first_retrieval_missed_the_lock_takes_it_with_the_next(
    tmp_path: Path,
) -> None:
    """A retrieval that started while another server's DELETE had the stripe for a
    moment goes on without the lock; the study's next retrieval takes it, so a
    study viewed without a pause is not left unprotected."""
    reading, deleting = flights(tmp_path), flights(tmp_path)
    locks = FileLocks(tmp_path / LOCK_DIR)
    async with locks.hold(f"r-{stripe('S')}", exclusive=True):  # the DELETE's moment
        missed = reading.hold("S")
    assert await deleting.settled("S", 0.0)  # nothing held it
    second = reading.hold("S")
    assert not await deleting.settled("S", 0.1)
    missed.release()
    second.release()
    assert await asyncio.wait_for(deleting.settled("S", DEADLINE), DEADLINE)


class HeldIndex:
    """One server's view of the shared index: its batches wait at ``gate`` once
    ``entered`` is set (``hold``), or fail (``fail``), before reaching the index."""

    def __init__(self, index: DicomIndex, *, hold: bool = False, fail: bool = False) -> None:
        self._index = index
        self.hold, self.fail = hold, fail
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def store_batch(self, records: Any, **kwargs: Any) -> Any:
        if self.hold:
            self.entered.set()
            await self.gate.wait()
        if self.fail:
            raise StorageUnavailable("MongoDB unavailable: injected")
        return await self._index.store_batch(records, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


async def test_a_failed_batch_leaves_the_file_another_server_is_indexing(tmp_path: Path) -> None:
    """Two servers on one blob store receive one instance at once. Blob keys come from
    the content, so both place the very same file; the second's index write fails.
    Its clean-up waits for the first to index the file (holding the study as a
    DELETE does), finds the index naming it, and leaves it: the instance the first
    acknowledged keeps its bytes."""
    registry = SearchRegistry.load()
    store = MongoStore(AsyncMongoMockClient(), "radhub_archive", registry)
    await store.start()
    blobs = FileBlobStore(tmp_path / "blobs")
    first, second = HeldIndex(store.dicom, hold=True), HeldIndex(store.dicom, fail=True)
    options = IngestOptions("http://x/dicomweb")

    def ingest(index: HeldIndex) -> IngestService:
        journal = IntentJournal(tmp_path / "blobs")
        return IngestService(index, blobs, None, options, journal, None, server(tmp_path / "blobs"))  # type: ignore[arg-type]

    body = make_instance("7.3", "7.3.1", "7.3.1.1")
    storing = asyncio.create_task(ingest(first).ingest(stream(body)))
    await asyncio.wait_for(first.entered.wait(), DEADLINE)  # its file is in place
    failing = asyncio.create_task(ingest(second).ingest(stream(body)))
    await asyncio.sleep(QUIET)  # the failed batch's clean-up, had it not waited
    first.gate.set()
    stored, failed = await asyncio.wait_for(asyncio.gather(storing, failing), DEADLINE)
    assert [s.sop_uid for s in stored.stored] == ["7.3.1.1"]
    assert [f.sop_uid for f in failed.failed] == ["7.3.1.1"]
    (row,) = await store.dicom.instance_files("7.3")
    assert blobs.path_for(row.blob.key).read_bytes() == body
