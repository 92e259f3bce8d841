"""The ingest pipeline: one road into the archive for STOW-RS now and C-STORE later.

For each received instance: stream its bytes to a staged file, then, without
waiting, finish its last write, fsync it and *describe* it (parse the header
without pixel data and build its index record: ``records.describe_instance``)
in the background, in a worker process when the server has them (``offload``),
while the next instance arrives. Per batch, in arrival order: report the
instances that were refused, move the others' files under their keys (one fsync
per directory) and index them in one index transaction -- holding their studies
against a DELETE (``archive_locks``) and the window in an intent against a crash
(``blob_journal``) -- and mark each touched study as pending for the ImagingStudy
sync, which writes it in the background (``study_sync``). An instance counts as
stored only once its blob and its index row are both durable; the FHIR side
follows, and a crash before it is caught up at start-up.

Outcomes per instance (PS3.18 §10.5.3, Table I.2-2 failure reasons): stored;
identical re-send (stored, no duplicate); a different instance under a known
SOP Instance UID (0x0111, unless ``overwrite``); not DICOM or incomplete
(0xC000 and friends from ``ingest_parse``); a Study Instance UID other than the
one the STOW URL names (0xA900); a Patient ID or issuer other than that of the
study the instance joins (0xA900; the study keeps its first patient); one the
index cannot hold, such as one too large for a MongoDB document (0xC000); a batch
the disk or the index had no room for, or whose database was unavailable (the
503s of the FHIR API: unreachable, timed out, failing over, locked), 0xA700 "Out
of Resources" -- PS3.4's "does not currently have enough resources", PS3.18's one
failure reason that tells a client to send it again later -- or that failed
otherwise (0x0110).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from dicomweb.archive_locks import ArchiveLocks
from dicomweb.blob_journal import InstanceUids, IntentJournal, reconcile_instances
from dicomweb.blobstore import BlobRef, BlobStore, Chunk, FileBlobStore, StagedBlob, StagedItem
from dicomweb.character_sets import unknown_character_set
from dicomweb.coalesce import Coalescer
from dicomweb.ingest_parse import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    InstanceHeader,
    InstanceRejected,
)
from dicomweb.records import Described, describe_many, with_blob
from dicomweb.study_sync import StudySync
from fhir_server.errors import StorageUnavailable
from fhir_server.storage.dicom_port import DicomIndex, StoreResult

log = logging.getLogger(__name__)

# A study UID in the STOW-RS URL that the instance does not carry: reported as
# 0xA900, as major archives do (PS3.18 §10.5.3 leaves the code to the server).
STUDY_UID_MISMATCH = DATA_SET_DOES_NOT_MATCH_SOP_CLASS
# An instance naming another patient than the study it joins holds (a wrong-patient
# image): refused, 0xA900 likewise, so that one patient's study never shows another's
# images or demographics, nor moves to them.
PATIENT_MISMATCH = DATA_SET_DOES_NOT_MATCH_SOP_CLASS
DEFAULT_BATCH_SIZE = 64
PARSE_IN_MEMORY = 4 * 1024 * 1024
DESCRIBE_AHEAD = 4  # instances received but not yet described, at most (plus one)
DESCRIBE_TOGETHER = 8  # instances described in one worker call, at most
_OUT_OF_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class StagingBlobStore(BlobStore, Protocol):
    """A blob store that can stage a file before its UIDs are known (FileBlobStore)."""

    async def stage_behind(
        self, chunks: AsyncIterable[Chunk], *, keep: int = 0
    ) -> asyncio.Future[StagedBlob]: ...

    async def make_durable_many(self, staged: Sequence[StagedBlob]) -> list[Exception | None]: ...

    async def adopt_many(self, items: Sequence[StagedItem]) -> list[BlobRef]: ...

    async def discard(self, staged: StagedBlob) -> None: ...


@dataclass(frozen=True)
class Stored:
    """An instance the archive now holds."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    # what the sender should know of how it was read (``character_sets``), if anything
    warning: str | None = None


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
    staged: asyncio.Future[StagedBlob]  # its last write, running in the background
    durable: asyncio.Future[None]  # then the staged file's fsync
    described: asyncio.Future[Described]  # and its header and index record


@dataclass(frozen=True)
class _Accepted:
    staged: StagedBlob
    described: Described

    @property
    def uids(self) -> InstanceUids:
        h = self.described.header
        return h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid


@dataclass(frozen=True)
class _Pending:
    described: Described
    blob: BlobRef

    @property
    def header(self) -> InstanceHeader:
        return self.described.header


@dataclass(frozen=True)
class IngestOptions:
    """``base_url`` is the DICOMweb base (bulk data URIs in the stored metadata)."""

    base_url: str
    overwrite: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    describe_lanes: int = 1  # instances described at once: one per worker process


Incoming = AsyncIterable[Chunk] | InstanceRejected
"""One instance as it arrives: its bytes, or why it was refused unread."""

Offload = Callable[..., Awaitable[Any]]
"""Runs ``fn(*args)`` (a picklable function) away from the event loop."""


class IngestService:
    """Receives instances into the blob store and the index (see the module docstring).

    ``offload`` runs the describing of each instance: the server's worker
    processes (``WorkerPool.run``); by default a thread of this process.
    """

    def __init__(
        self,
        index: DicomIndex,
        blobs: StagingBlobStore,
        sync: StudySync | None,
        options: IngestOptions,
        journal: IntentJournal | None = None,
        offload: Offload | None = None,
        locks: ArchiveLocks | None = None,
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._sync = sync
        self._options = options
        self._journal = journal
        # DELETE takes its study's lock from here (``archive_locks``)
        self.locks = locks or ArchiveLocks()
        self._offload: Offload = offload or asyncio.to_thread
        # a thread can parse the bytes still in memory; a process reads the file
        self._keep = PARSE_IN_MEMORY if offload is None else 0
        # shared by concurrent requests: under load, one hand-off serves several instances
        self._describer: Coalescer[Path | bytes, Described] = Coalescer(
            self._describe_many, DESCRIBE_TOGETHER, options.describe_lanes
        )
        self._fsyncer: Coalescer[StagedBlob, None] = Coalescer(blobs.make_durable_many)

    async def ingest(
        self, instances: AsyncIterable[Incoming], expected_study: str | None = None
    ) -> IngestReport:
        """Store each instance of ``instances``: each a stream of bytes (one whose
        stream raises ``InstanceRejected`` is refused with that reason), or the
        refusal of one the caller could not read (it takes its place in the report)."""
        report = IngestReport()
        batch: list[_Received] = []
        try:
            async for body in instances:
                batch.append(await self._receive(body))
                if len(batch) > DESCRIBE_AHEAD:
                    # bounded: an instance waiting to be described may hold its bytes
                    await asyncio.wait([batch[-DESCRIBE_AHEAD - 1].described])
                if len(batch) >= self._options.batch_size:
                    await self._flush(batch, report, expected_study)
                    batch = []
            await self._flush(batch, report, expected_study)
        except BaseException:
            await self._discard(batch)  # never acknowledged: leave no staged file behind
            raise
        return report

    async def ingest_one(self, body: AsyncIterable[Chunk]) -> Stored | Failed:
        """Store one instance (the DIMSE C-STORE road)."""

        async def single() -> AsyncIterable[AsyncIterable[Chunk]]:
            yield body

        report = await self.ingest(single())
        return report.stored[0] if report.stored else report.failed[0]

    async def _receive(self, body: Incoming) -> _Received:
        """Read one instance; the end of its staging, its fsync and its description
        go on in the background while the next one arrives."""
        if isinstance(body, InstanceRejected):
            return _refused(body)
        try:
            staging = await self._blobs.stage_behind(body, keep=self._keep)
        except InstanceRejected as refused:  # its source broke off: nothing was staged
            return _refused(refused)
        staged = asyncio.ensure_future(_without_data(staging))
        durable = asyncio.ensure_future(self._durable(staged))
        return _Received(staged, durable, asyncio.ensure_future(self._described(staging)))

    async def _durable(self, staged: Awaitable[StagedBlob]) -> None:
        await self._fsyncer.submit(await staged)

    async def _described(self, staging: Awaitable[StagedBlob]) -> Described:
        staged = await staging
        return await self._describer.submit(staged.data or staged.path)

    async def _describe_many(self, sources: list[Path | bytes]) -> list[Described | Exception]:
        described: list[Described | Exception] = await self._offload(
            describe_many, sources, self._options.base_url
        )
        return described

    async def _discard(self, received: Sequence[_Received | _Accepted]) -> None:
        for r in received:
            if isinstance(r, _Accepted):
                await self._blobs.discard(r.staged)
                continue
            for pending in (r.durable, r.described):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending  # let its fsync and parse finish before the file goes
            with contextlib.suppress(Exception, asyncio.CancelledError):
                staged = await r.staged
                await self._blobs.discard(staged)  # (a staging that failed left no file)

    async def _accepted(
        self, received: list[_Received], report: IngestReport, expected_study: str | None
    ) -> list[_Accepted]:
        """The instances of a batch that can be stored, in order; the others are
        reported as failed and their staged files discarded."""
        accepted: list[_Accepted] = []
        for r in received:
            try:
                described = await r.described
            except InstanceRejected as exc:
                await self._discard([r])
                report.failed.append(_refusal(exc))
                continue
            except Exception:  # a fault in describing it: this instance alone fails
                log.exception("describing a received instance failed")
                await self._discard([r])
                report.failed.append(Failed(PROCESSING_FAILURE, "could not be read (a fault here)"))
                continue
            h = described.header
            if expected_study is not None and h.study_instance_uid != expected_study:
                await self._discard([r])
                message = f"Study Instance UID {h.study_instance_uid} is not {expected_study}"
                report.failed.append(
                    Failed(STUDY_UID_MISMATCH, message, h.sop_class_uid, h.sop_instance_uid)
                )
                continue
            accepted.append(_Accepted(r.staged.result(), described))
        return accepted

    async def _flush(
        self, received: list[_Received], report: IngestReport, expected_study: str | None
    ) -> None:
        """Wait for a batch's fsyncs and descriptions, report the instances refused,
        and commit the others (``_commit``)."""
        if not received:
            return
        try:
            await asyncio.gather(*(r.durable for r in received))
        except Exception as exc:
            log.exception("making a batch of %d staged instances durable failed", len(received))
            await self._discard(received)
            for r in received:
                try:
                    header = (await r.described).header
                except InstanceRejected as refused:
                    report.failed.append(_refusal(refused))
                except Exception as unstaged:  # its own staging failed: nothing to describe
                    report.failed.append(failure(unstaged))
                else:
                    report.failed.append(failure(exc, header))
            return
        accepted = await self._accepted(received, report, expected_study)
        if not accepted:
            return
        # once begun, a commit runs to its end even if the request is cancelled:
        # cut short between a rename and the index write, it would leave an orphan
        await asyncio.shield(self._commit(accepted, report))

    async def _commit(self, accepted: list[_Accepted], report: IngestReport) -> None:
        """Adopt the staged files under their keys and index them, inside an intent
        (``blob_journal``) and holding their instances and studies (``archive_locks``);
        a batch that fails leaves neither blob nor staged file behind."""
        uids = [a.uids for a in accepted]
        studies, sops = {u[0] for u in uids}, {u[2] for u in uids}
        async with self._intent(uids):
            failed = False
            named: set[str] = set()
            async with self.locks.storing(studies, sops):
                try:
                    named = await self._named(uids)
                    refs = await self._blobs.adopt_many([(a.staged, *a.uids) for a in accepted])
                    batch = [
                        _Pending(a.described, ref) for a, ref in zip(accepted, refs, strict=True)
                    ]
                    records = [with_blob(p.described.record, p.blob) for p in batch]
                    overwrite = self._options.overwrite
                    results = await self._index.store_batch(records, overwrite=overwrite)
                except Exception as exc:
                    log.exception("storing a batch of %d instances failed", len(accepted))
                    report.failed.extend(failure(exc, a.described.header) for a in accepted)
                    failed = True
                else:
                    touched = [
                        await self._settle(p, r, report)
                        for p, r in zip(batch, results, strict=True)
                    ]
            if failed:
                await self._forget(uids, named)
                for a in accepted:  # those the failed adoption left in staging
                    await self._blobs.discard(a.staged)
                return
        if self._sync is not None:
            self._sync.mark(sorted({uid for uid in touched if uid is not None}))

    def _intent(self, uids: list[InstanceUids]) -> AbstractAsyncContextManager[None]:
        if self._journal is None:
            return contextlib.nullcontext()
        return self._journal.intent(uids)

    async def _named(self, uids: list[InstanceUids]) -> set[str]:
        """The blobs the index names for ``uids`` before their batch, when it may replace
        them (``overwrite``; else a stored instance is never rewritten)."""
        if not self._options.overwrite:
            return set()
        files = [await self._index.instance_files(*u) for u in uids]
        return {f.blob.key for found in files for f in found}

    async def _forget(self, uids: list[InstanceUids], named: set[str]) -> None:
        """Remove the blobs of a batch the index refused, keeping those it names and
        those it ``named`` before the batch: an index that is not all-or-nothing may
        have lost a row it held, and its file is then all that is left of it. Each
        study's once the batch has let go of it, holding it as a DELETE does: another
        batch of the same instance may have placed the very same file
        (``reconcile_instances``)."""
        if isinstance(self._blobs, FileBlobStore):
            try:
                hold = self.locks.removing
                await reconcile_instances(self._index, self._blobs, uids, keep=named, hold=hold)
            except Exception:
                log.exception("could not remove the blobs of a failed batch")

    async def _settle(
        self, pending: _Pending, result: StoreResult, report: IngestReport
    ) -> str | None:
        """Record the outcome and remove blobs nothing refers to; the study UID if changed."""
        h = pending.header
        refused = refusal_of(result, h)
        if refused is not None:
            await self._remove(pending.blob.key)
            report.failed.append(refused)
            return None
        if result.previous is not None and result.previous.key != pending.blob.key:
            await self._remove(result.previous.key)
        report.stored.append(
            Stored(
                h.sop_class_uid,
                h.sop_instance_uid,
                h.study_instance_uid,
                h.series_instance_uid,
                unknown_character_set(h.specific_character_set),
            )
        )
        return None if result.outcome == "duplicate" else h.study_instance_uid

    async def _remove(self, key: str) -> None:
        """Remove a blob the index no longer names; the outcome stands if that fails
        (the blob is then only space, found by the next reconciliation of its instance)."""
        try:
            await self._blobs.delete(key)
        except OSError:
            log.exception("could not remove blob %s", key)


async def _without_data(staging: Awaitable[StagedBlob]) -> StagedBlob:
    """The staged file without the contents it may carry: its description holds
    what is needed, and the batch should not hold every instance's bytes."""
    return replace(await staging, data=None)


def _failed(h: InstanceHeader, reason: int, message: str) -> Failed:
    return Failed(reason, message, h.sop_class_uid, h.sop_instance_uid)


def refusal_of(result: StoreResult, h: InstanceHeader) -> Failed | None:
    """The failure an index outcome reports, when the index refused the instance."""
    if result.outcome == "conflict":
        message = f"SOP Instance {h.sop_instance_uid} is stored with different content"
        return _failed(h, DUPLICATE_SOP_INSTANCE, message)
    if result.outcome == "other-patient":
        message = (
            f"Study {h.study_instance_uid} is stored for another patient: this instance's"
            " Patient ID or Issuer of Patient ID differs (a wrong-patient image?)"
        )
        return _failed(h, PATIENT_MISMATCH, message)
    if result.outcome == "unindexable":  # the index cannot hold it, whoever sends it
        message = f"SOP Instance {h.sop_instance_uid} cannot be stored: {result.detail}"
        return _failed(h, CANNOT_UNDERSTAND, message)
    return None


def failure(exc: BaseException, header: InstanceHeader | None = None) -> Failed:
    """How an instance that failed on a fault of the archive's (logged where it happened)
    is reported: its reason, and words that never carry the fault's own text, which
    may name server paths (an OSError names its file)."""
    cause = _retriable_cause(exc)
    if cause == "room":
        message = "the archive is out of room; send it again later"
    elif cause == "unavailable":
        message = "the archive's database is unavailable; send it again later"
    else:
        message = "the archive could not store it (a fault here, logged)"
    reason = PROCESSING_FAILURE if cause is None else OUT_OF_RESOURCES
    if header is None:
        return Failed(reason, message)
    return _failed(header, reason, message)


def failure_reason(exc: BaseException) -> int:
    """Out of Resources (0xA700) when the archive cannot store now but may later
    (``_retriable_cause``), so a client knows to send it again later or elsewhere;
    else Processing Failure (0x0110)."""
    return PROCESSING_FAILURE if _retriable_cause(exc) is None else OUT_OF_RESOURCES


def _retriable_cause(exc: BaseException) -> str | None:
    """``"room"`` when the archive ran out of room -- a full disk or quota, or a full
    database (SQLite's SQLITE_FULL) -- anywhere in the chain of causes; else
    ``"unavailable"`` when its database was (``StorageUnavailable``, which both stores
    raise for what the FHIR API answers 503); else None."""
    unavailable = False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _OUT_OF_ROOM:
            return "room"
        code = getattr(seen, "sqlite_errorcode", None)  # set on errors SQLite raised
        if isinstance(seen, sqlite3.Error) and code == sqlite3.SQLITE_FULL:
            return "room"
        unavailable = unavailable or isinstance(seen, StorageUnavailable)
        seen = seen.__cause__ or seen.__context__
    return "unavailable" if unavailable else None


def _refusal(exc: InstanceRejected) -> Failed:
    return Failed(exc.reason, exc.message, exc.sop_class_uid, exc.sop_uid)


def _refused(exc: InstanceRejected) -> _Received:
    """An instance refused before anything was staged, in its place in the batch."""
    loop = asyncio.get_running_loop()
    staged: asyncio.Future[StagedBlob] = loop.create_future()
    staged.set_exception(exc)
    durable: asyncio.Future[None] = loop.create_future()
    durable.set_result(None)
    described: asyncio.Future[Described] = loop.create_future()
    described.set_exception(exc)
    return _Received(staged, durable, described)
