"""The ingest pipeline: one road into the archive for STOW-RS now and C-STORE later.

For each received instance: stream its bytes to a staged file (held in memory
too when it is at most ``PARSE_IN_MEMORY`` bytes, so the parser need not read
it back; larger ones are never whole in memory), fsync it in the background
while the next one arrives, parse the header without pixel data, then per
batch move the files under their keys (one fsync per directory), index them
in one index transaction, and mark each touched study as pending for the
ImagingStudy sync, which writes it in the background (``study_sync``). An
instance counts as stored only once its blob and its index row are both
durable; the FHIR side follows, and a crash before it is caught up at start-up.

Outcomes per instance (PS3.18 §10.5.3, Table I.2-2 failure reasons):
stored; identical re-send (stored, no duplicate); a different instance under
a known SOP Instance UID (0x0111, unless ``overwrite``); not DICOM or
incomplete (0xC000 and friends from ``ingest_parse``); a Study Instance UID
other than the one the STOW URL names (0xA900).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

from dicomweb.blob_journal import InstanceUids, IntentJournal, reconcile_instances
from dicomweb.blobstore import BlobRef, BlobStore, FileBlobStore, StagedBlob, StagedItem
from dicomweb.ingest_parse import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    PROCESSING_FAILURE,
    InstanceRejected,
    ParsedInstance,
    parse_instance,
)
from dicomweb.records import index_record
from dicomweb.study_sync import StudySync
from fhir_server.storage.dicom_port import DicomIndex, InstanceRecord, StoreResult

log = logging.getLogger(__name__)

# A study UID in the STOW-RS URL that the instance does not carry: reported as
# 0xA900, as major archives do (PS3.18 §10.5.3 leaves the code to the server).
STUDY_UID_MISMATCH = DATA_SET_DOES_NOT_MATCH_SOP_CLASS
DEFAULT_BATCH_SIZE = 64
PARSE_IN_MEMORY = 4 * 1024 * 1024


class StagingBlobStore(BlobStore, Protocol):
    """A blob store that can stage a file before its UIDs are known (FileBlobStore)."""

    async def stage(self, chunks: AsyncIterable[bytes], *, keep: int = 0) -> StagedBlob: ...

    async def make_durable(self, staged: StagedBlob) -> None: ...

    async def adopt_many(self, items: Sequence[StagedItem]) -> list[BlobRef]: ...

    async def discard(self, staged: StagedBlob) -> None: ...


@dataclass(frozen=True)
class Stored:
    """An instance the archive now holds."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class Failed:
    """An instance that was not stored, with its Failure Reason (0008,1197)."""

    reason: int
    message: str
    sop_class_uid: str | None = None
    sop_uid: str | None = None


@dataclass
class IngestReport:
    """What one ingest call did, instance by instance, in arrival order."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)


@dataclass(frozen=True)
class _Received:
    parsed: ParsedInstance
    staged: StagedBlob
    durable: asyncio.Future[None]  # the staged file's fsync, running in the background

    @property
    def uids(self) -> InstanceUids:
        h = self.parsed.header
        return h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid


@dataclass(frozen=True)
class _Pending:
    parsed: ParsedInstance
    blob: BlobRef


@dataclass(frozen=True)
class IngestOptions:
    """``base_url`` is the DICOMweb base (bulk data URIs in the stored metadata)."""

    base_url: str
    overwrite: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE


class IngestService:
    """Receives instances into the blob store and the index (see the module docstring)."""

    def __init__(
        self,
        index: DicomIndex,
        blobs: StagingBlobStore,
        sync: StudySync | None,
        options: IngestOptions,
        journal: IntentJournal | None = None,
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._sync = sync
        self._options = options
        self._journal = journal

    async def ingest(
        self, instances: AsyncIterable[AsyncIterable[bytes]], expected_study: str | None = None
    ) -> IngestReport:
        """Store each instance of ``instances`` (each a stream of bytes)."""
        report = IngestReport()
        batch: list[_Received] = []
        try:
            async for body in instances:
                received = await self._receive(body, expected_study)
                if isinstance(received, Failed):
                    report.failed.append(received)
                    continue
                batch.append(received)
                if len(batch) >= self._options.batch_size:
                    pending, batch = batch, []
                    await self._flush(pending, report)
        except BaseException:
            await self._discard(batch)  # never acknowledged: leave no staged file behind
            raise
        await self._flush(batch, report)
        return report

    async def ingest_one(self, body: AsyncIterable[bytes]) -> Stored | Failed:
        """Store one instance (the DIMSE C-STORE road)."""

        async def single() -> AsyncIterable[AsyncIterable[bytes]]:
            yield body

        report = await self.ingest(single())
        return report.stored[0] if report.stored else report.failed[0]

    async def _receive(
        self, body: AsyncIterable[bytes], expected_study: str | None
    ) -> _Received | Failed:
        staged = await self._blobs.stage(body, keep=PARSE_IN_MEMORY)
        try:
            parsed = await asyncio.to_thread(parse_instance, staged.data or staged.path)
        except InstanceRejected as exc:
            await self._blobs.discard(staged)
            return Failed(exc.reason, exc.message)
        h = parsed.header
        if expected_study is not None and h.study_instance_uid != expected_study:
            await self._blobs.discard(staged)
            message = f"Study Instance UID {h.study_instance_uid} is not {expected_study}"
            return Failed(STUDY_UID_MISMATCH, message, h.sop_class_uid, h.sop_instance_uid)
        staged = replace(staged, data=None)  # parsed: the bytes need not stay in memory
        return _Received(parsed, staged, asyncio.ensure_future(self._blobs.make_durable(staged)))

    async def _discard(self, received: list[_Received]) -> None:
        for r in received:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await r.durable  # let its fsync finish before the file goes
            await self._blobs.discard(r.staged)

    async def _flush(self, received: list[_Received], report: IngestReport) -> None:
        """Adopt the staged files under their keys and index them, inside an intent
        (``blob_journal``) so a crash in between leaves nothing the index does not name."""
        if not received:
            return
        try:
            await asyncio.gather(*(r.durable for r in received))
        except Exception as exc:
            log.exception("making a batch of %d staged instances durable failed", len(received))
            await self._discard(received)
            report.failed.extend(_failed(r.parsed, PROCESSING_FAILURE, str(exc)) for r in received)
            return
        uids = [r.uids for r in received]
        async with self._intent(uids):
            refs = await self._blobs.adopt_many([(r.staged, *r.uids) for r in received])
            batch = [_Pending(r.parsed, ref) for r, ref in zip(received, refs, strict=True)]
            try:
                records = await self._records(batch)
                results = await self._index.store_batch(records, overwrite=self._options.overwrite)
            except Exception as exc:
                log.exception("indexing a batch of %d instances failed", len(batch))
                report.failed.extend(_failed(p.parsed, PROCESSING_FAILURE, str(exc)) for p in batch)
                await self._forget(uids)
                return
            touched = [
                await self._settle(p, r, report) for p, r in zip(batch, results, strict=True)
            ]
        if self._sync is not None:
            self._sync.mark(sorted({uid for uid in touched if uid is not None}))

    def _intent(self, uids: list[InstanceUids]) -> AbstractAsyncContextManager[None]:
        if self._journal is None:
            return contextlib.nullcontext()
        return self._journal.intent(uids)

    async def _forget(self, uids: list[InstanceUids]) -> None:
        """Remove the blobs of a batch the index refused (keeping those it already had)."""
        if isinstance(self._blobs, FileBlobStore):
            try:
                await reconcile_instances(self._index, self._blobs, uids)
            except Exception:
                log.exception("could not remove the blobs of a failed batch")

    async def _records(self, batch: list[_Pending]) -> list[InstanceRecord]:
        # the Patient is left to the deferred sync, which records it on the study
        return [index_record(p.parsed, p.blob, self._options.base_url) for p in batch]

    async def _settle(
        self, pending: _Pending, result: StoreResult, report: IngestReport
    ) -> str | None:
        """Record the outcome and remove blobs nothing refers to; the study UID if changed."""
        h = pending.parsed.header
        if result.outcome == "conflict":
            await self._blobs.delete(pending.blob.key)
            message = f"SOP Instance {h.sop_instance_uid} is stored with different content"
            report.failed.append(_failed(pending.parsed, DUPLICATE_SOP_INSTANCE, message))
            return None
        if result.previous is not None and result.previous.key != pending.blob.key:
            await self._blobs.delete(result.previous.key)
        report.stored.append(
            Stored(h.sop_class_uid, h.sop_instance_uid, h.study_instance_uid, h.series_instance_uid)
        )
        return None if result.outcome == "duplicate" else h.study_instance_uid


def _failed(parsed: ParsedInstance, reason: int, message: str) -> Failed:
    h = parsed.header
    return Failed(reason, message, h.sop_class_uid, h.sop_instance_uid)
