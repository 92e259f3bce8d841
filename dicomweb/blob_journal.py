"""Crash recovery between the blob store and the DICOM index.

Ingest moves a blob under its key *before* the index row naming it commits
(so an acknowledged instance always has its bytes), and DELETE removes blobs
*after* their rows are gone. A crash inside either window leaves a blob no
row names: never served (retrieval goes through the index), but the blob
store and the index would disagree for ever.

So each window is bracketed by an *intent*: a small file under
``<blobs>/.intents`` listing the instances (study, series, SOP Instance UIDs)
whose blobs may change, written and fsynced before the window opens, held
under an exclusive ``flock`` while it is open, and removed when it closes.
``reconcile`` (run at start-up, and by ingest when an index write fails)
takes every intent nobody holds -- its writer died -- and, per instance,
keeps the blob the index names and removes any other blob under that
instance's stem. It also removes ``.tmp-`` files left by interrupted writes.
The work is proportional to what was in flight, not to the archive's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from dicomweb.blobstore import FileBlobStore, blob_stem, fsync_path
from fhir_server.storage.dicom_port import DicomIndex

log = logging.getLogger(__name__)

InstanceUids = tuple[str, str, str]
_INTENTS = ".intents"
_WRITING = ".new-"


@dataclass(frozen=True)
class ReconcileReport:
    """What a reconciliation removed."""

    intents: int = 0
    orphans: int = 0
    temporaries: int = 0


class IntentJournal:
    """Intent files under ``<root>/.intents`` (see the module docstring)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._dir = root / _INTENTS
        self._fsync = fsync

    @contextlib.asynccontextmanager
    async def intent(self, uids: Sequence[InstanceUids]) -> AsyncIterator[None]:
        """Hold an intent for ``uids`` while the body runs; removed afterwards."""
        path, fd = await asyncio.to_thread(self._open, list(uids))
        try:
            yield
        finally:
            await asyncio.to_thread(self._close, path, fd)

    def _open(self, uids: list[InstanceUids]) -> tuple[Path, int]:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        writing = self._dir / f"{_WRITING}{name}"
        fd = os.open(writing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the lock follows the inode through the rename
        os.write(fd, orjson.dumps(uids))
        if self._fsync:
            os.fsync(fd)
        final = self._dir / f"{name}.json"
        os.replace(writing, final)  # only complete intents carry the final name
        if self._fsync:
            fsync_path(self._dir)
        return final, fd

    def _close(self, path: Path, fd: int) -> None:
        # not fsynced: an intent that reappears after a crash is merely reconciled again
        path.unlink(missing_ok=True)
        os.close(fd)

    def claim_abandoned(self) -> list[tuple[Path, int, list[InstanceUids]]]:
        """Intents whose writer is gone, each locked by us (path, fd, instances)."""
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
            claimed.append((path, fd, _read_uids(path, fd)))
        return claimed

    def release(self, path: Path, fd: int) -> None:
        """Remove a claimed intent once reconciled."""
        self._close(path, fd)


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
    index: DicomIndex, blobs: FileBlobStore, uids: Sequence[InstanceUids]
) -> int:
    """Remove every blob of ``uids`` that the index does not name; how many were removed."""
    removed = 0
    for study, series, sop in uids:
        rows = await index.instances(study, series, sop)
        keep = {row.blob.key for row in rows}
        for key in await asyncio.to_thread(_keys_of, blobs.root, study, series, sop):
            if key not in keep and await blobs.delete(key):
                removed += 1
    return removed


def _keys_of(root: Path, study: str, series: str, sop: str) -> list[str]:
    stem = root / blob_stem(study, series, sop)
    if not stem.parent.is_dir():
        return []
    return [p.relative_to(root).as_posix() for p in stem.parent.glob(f"{stem.name}.*.dcm")]


async def reconcile(
    index: DicomIndex, blobs: FileBlobStore, journal: IntentJournal, *, temp_grace: float = 0.0
) -> ReconcileReport:
    """Make the blob store agree with the index after a crash (see the module docstring).

    ``temp_grace``: temporaries younger than this many seconds are left alone
    (another live process may be writing them when several share the blobs).
    """
    intents = await asyncio.to_thread(journal.claim_abandoned)
    orphans = 0
    for path, fd, uids in intents:
        try:
            orphans += await reconcile_instances(index, blobs, uids)
        finally:
            await asyncio.to_thread(journal.release, path, fd)
    temporaries = await blobs.remove_temporaries(older_than=time.time() - temp_grace)
    report = ReconcileReport(len(intents), orphans, temporaries)
    if intents or temporaries:
        log.warning("blob store reconciled after an unclean stop: %s", report)
    return report
