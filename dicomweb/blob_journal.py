"""Crash recovery between the blob store and the DICOM index.

Ingest moves a blob under its key *before* the index row naming it commits
(so an acknowledged instance always has its bytes), and DELETE removes blobs
*after* their rows are gone. A crash inside either window leaves a blob no
row names: never served (retrieval goes through the index), but the blob
store and the index would disagree for ever.

So each window is bracketed by an *intent*: a small file under
``<blobs>/.intents`` listing the instances (study, series, SOP Instance UIDs)
whose blobs may change, written and fsynced before the window opens, held
under an exclusive ``flock`` while it is open, and emptied when it closes
(the file is kept, still locked, for a later intent: ``IntentJournal``).
``reconcile`` (run at start-up, and by ingest when an index write fails)
takes every intent nobody holds -- its writer died -- and, per instance,
keeps the blob the index names and removes any other blob under that
instance's stem; an empty one is only removed. It also removes ``.tmp-``
files left by interrupted writes. The work is proportional to what was in
flight, not to the archive's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

from dicomweb.blobstore import FileBlobStore, blob_stem, fsync_path
from fhir_server.storage.dicom_port import DicomIndex

log = logging.getLogger(__name__)

InstanceUids = tuple[str, str, str]
# Holds a study as a DELETE does while its blobs are reconciled (``archive_locks``).
Hold = Callable[[str], AbstractAsyncContextManager[None]]
_INTENTS = ".intents"
_WRITING = ".new-"


@dataclass(frozen=True)
class ReconcileReport:
    """What a reconciliation removed."""

    intents: int = 0
    orphans: int = 0
    temporaries: int = 0


class IntentJournal:
    """Intent files under ``<root>/.intents`` (see the module docstring).

    A file, once made, is kept for the next intent (emptied in between) rather
    than removed: each removal left a freed inode behind, and ext4 without a
    journal skips recently freed inodes one by one when it makes the next file,
    so every blob ingest made afterwards paid for every intent of the last half
    minute. A live process keeps all its files locked, empty or not.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._dir = root / _INTENTS
        self._fsync = fsync
        self._idle: list[_Slot] = []  # emptied files, kept locked for the next intent

    @contextlib.asynccontextmanager
    async def intent(self, uids: Sequence[InstanceUids]) -> AsyncIterator[None]:
        """Hold an intent for ``uids`` while the body runs; withdrawn afterwards."""
        data = orjson.dumps(list(uids))
        idle = self._idle.pop() if self._idle else None
        slot = await asyncio.to_thread(self._create, data) if idle is None else idle
        try:
            if idle is not None:
                await asyncio.to_thread(self._rewrite, idle, data)
        except OSError:
            await asyncio.to_thread(_close, slot)  # unlocked: reconciled at the next start
            raise
        # (cancelled instead: its thread may still write, so the slot stays open and
        # locked, unused, until the process ends)
        try:
            yield
        finally:
            try:
                await asyncio.to_thread(self._withdraw, slot)
            except OSError:
                log.exception("could not withdraw intent %s", slot.path)
                await asyncio.to_thread(_close, slot)
            else:
                self._idle.append(slot)

    def _create(self, data: bytes) -> _Slot:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        writing = self._dir / f"{_WRITING}{name}"
        fd = os.open(writing, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the lock follows the inode through the rename
        os.write(fd, data)
        if self._fsync:
            os.fsync(fd)
        final = self._dir / f"{name}.json"
        os.replace(writing, final)  # only complete intents carry the final name
        if self._fsync:
            fsync_path(self._dir)
        return _Slot(final, fd)

    def _rewrite(self, slot: _Slot, data: bytes) -> None:
        # The file is empty (``_withdraw``) unless that was not yet on disk; either
        # way the intent counts only once the fsync returns, and what a crash
        # before it leaves is an old intent (reconciling it again changes
        # nothing) or unreadable (ignored: its window never opened).
        os.pwrite(slot.fd, data, 0)
        if self._fsync:
            os.fsync(slot.fd)

    def _withdraw(self, slot: _Slot) -> None:
        # not fsynced: an intent that reappears after a crash is merely reconciled again
        os.ftruncate(slot.fd, 0)

    def claim_abandoned(self) -> list[tuple[Path, int, list[InstanceUids]]]:
        """Intents whose writer is gone, each locked by us (path, fd, instances).
        Withdrawn ones (empty files a stopped process kept for reuse) are removed."""
        if not self._dir.is_dir():
            return []
        claimed = []
        for path in sorted(self._dir.iterdir()):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live writer holds it
                continue
            if not path.name.startswith(_WRITING) and os.fstat(fd).st_size == 0:
                self.release(path, fd)
                continue
            claimed.append((path, fd, _read_uids(path, fd)))
        return claimed

    def release(self, path: Path, fd: int) -> None:
        """Remove a claimed intent once reconciled."""
        path.unlink(missing_ok=True)
        os.close(fd)


class _Slot(NamedTuple):
    """An intent file this process made, and its open (locked) descriptor."""

    path: Path
    fd: int


def _close(slot: _Slot) -> None:
    os.close(slot.fd)


def _read_uids(path: Path, fd: int) -> list[InstanceUids]:
    if path.name.startswith(_WRITING):
        return []  # its writer died before adopting anything
    try:
        raw = orjson.loads(os.read(fd, os.fstat(fd).st_size))
        return [(str(a), str(b), str(c)) for a, b, c in raw]
    except (orjson.JSONDecodeError, ValueError, TypeError):
        log.warning("unreadable intent %s ignored", path)
        return []


async def reconcile_instances(
    index: DicomIndex,
    blobs: FileBlobStore,
    uids: Sequence[InstanceUids],
    *,
    keep: Collection[str] = (),
    hold: Hold | None = None,
) -> int:
    """Remove every blob of ``uids`` that the index does not name (except those in
    ``keep``); how many were removed. Each study's under ``hold(study)`` when given:
    a blob key comes from the content, so a batch of the same instance (in this
    process or another on the same blob store) may have placed the very same file
    and not yet indexed it; holding the study as a DELETE does (``archive_locks``)
    waits until it has."""
    removed = 0
    by_study: dict[str, list[InstanceUids]] = {}
    for u in uids:
        by_study.setdefault(u[0], []).append(u)
    for study, its in sorted(by_study.items()):
        async with hold(study) if hold is not None else contextlib.nullcontext():
            for study_uid, series, sop in its:
                rows = await index.instance_files(study_uid, series, sop)
                named = {row.blob.key for row in rows}
                found = await asyncio.to_thread(_keys_of, blobs.root, study_uid, series, sop)
                for key in found:
                    if key not in named and key not in keep and await blobs.delete(key):
                        removed += 1
    return removed


def _keys_of(root: Path, study: str, series: str, sop: str) -> list[str]:
    stem = root / blob_stem(study, series, sop)
    if not stem.parent.is_dir():
        return []
    return [p.relative_to(root).as_posix() for p in stem.parent.glob(f"{stem.name}.*.dcm")]


async def reconcile(
    index: DicomIndex,
    blobs: FileBlobStore,
    journal: IntentJournal,
    *,
    temp_grace: float = 0.0,
    hold: Hold | None = None,
) -> ReconcileReport:
    """Make the blob store agree with the index after a crash (see the module docstring).

    ``temp_grace``: temporaries younger than this many seconds are left alone
    (another live process may be writing them when several share the blobs);
    ``hold``: as ``reconcile_instances`` takes it.
    """
    intents = await asyncio.to_thread(journal.claim_abandoned)
    orphans = 0
    for path, fd, uids in intents:
        try:
            orphans += await reconcile_instances(index, blobs, uids, hold=hold)
        finally:
            await asyncio.to_thread(journal.release, path, fd)
    temporaries = await blobs.remove_temporaries(older_than=time.time() - temp_grace)
    report = ReconcileReport(len(intents), orphans, temporaries)
    if intents or temporaries:
        log.warning("blob store reconciled after an unclean stop: %s", report)
    return report
