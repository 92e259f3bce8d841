"""Runs the ImagingStudy sync: pending studies written when due, failures retried.

One loop (started by ``background``) writes what ``StudySync.pending`` says is
due -- a study whose ingest has gone quiet, one that kept receiving for too
long, a failed one whose backoff is over -- one study per FHIR transaction (a
study that can never be written does not hold the others back), and sleeps
until the next is due or something new is marked.

Pending studies are not written down anywhere: they are *derived* from what is
durable. At start-up ``scan`` compares the DICOM index with the ImagingStudies
-- a study whose revision is past the one its ImagingStudy was written from
(``DicomIndex.mark_synced``), a missing ImagingStudy, one whose instance or
series count or Patient differs, and an archive ImagingStudy whose study is no
longer indexed -- which covers every change acknowledged but not yet synced
when the process died. The scan is one index page walk plus one read per study.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from dicomweb.imaging_study import DICOM_UID_SYSTEM
from dicomweb.study_sync import (
    ENDPOINT_ID,
    IMAGING_STUDY,
    PAGE,
    AmbiguousPatient,
    StudySync,
    body_of,
    indexed_studies,
)
from fhir_server.interactions.services import Services
from fhir_server.search.parse import parse_search
from fhir_server.storage.dicom_port import Json

log = logging.getLogger(__name__)

# sleeps ``seconds`` (None: until woken), returns early when ``wake`` is set; False once stopped
Sleep = Callable[[float | None, asyncio.Event], Awaitable[bool]]


class SyncRetry:
    """The sync loop and its start-up scan (see the module docstring)."""

    def __init__(self, svc: Services, sync: StudySync) -> None:
        self._svc = svc
        self._sync = sync

    async def settled(self) -> None:
        """Return once no study is pending (``PendingStudies.settled``)."""
        await self._sync.settled()

    async def scan(self) -> list[str]:
        """Mark every study whose ImagingStudy missed a change as pending; which."""
        index = self._svc.store.dicom
        stale = [s.uid async for s in indexed_studies(index) if not await self._sync.in_sync(s)]
        stale += await self._orphans()
        self._sync.pending.mark(stale, urgent=True)
        return stale

    async def sync_due(self) -> list[str]:
        """Write each study that is due, on its own; the ones that failed."""
        pending = self._sync.pending
        failed: list[str] = []
        for uid in pending.take_due():
            try:
                await self._sync.write([uid])
            except Exception as exc:
                if isinstance(exc, AmbiguousPatient):  # (nothing broke: no traceback to read)
                    log.warning("ImagingStudy sync of %s waits: %s", uid, exc)
                else:
                    log.warning(
                        "ImagingStudy sync of %s failed; retrying later", uid, exc_info=True
                    )
                pending.failed(uid)
                failed.append(uid)
            else:
                pending.done(uid)
        return failed

    async def run(self, sleep: Sleep) -> None:
        """Scan, then write whatever is due until ``sleep`` says to stop."""
        pending = self._sync.pending
        try:
            await self.scan()
        except Exception:
            log.exception("the start-up scan for unsynced ImagingStudies failed")
        while True:
            pending.changed.clear()  # before looking: a mark from now on wakes the sleep
            await self.sync_due()
            if not await sleep(pending.next_due(), pending.changed):
                break
        pending.flush()  # stopping: write what is waiting rather than leave it to the scan
        await self.sync_due()

    async def _orphans(self) -> list[str]:
        """Archive ImagingStudies whose study is gone: those with the archive's
        Endpoint and their own id as Study Instance UID (never one a client wrote)."""
        params = [("endpoint", f"Endpoint/{ENDPOINT_ID}"), ("_count", str(PAGE))]
        query = parse_search(IMAGING_STUDY, params, self._svc.registry, strict=True).query
        gone: list[str] = []
        while True:
            page = await self._svc.store.search(query)
            for version in page.matches:
                if not archived_study(body_of(version)):
                    continue
                if await self._svc.store.dicom.study(version.id) is None:
                    gone.append(version.id)
            if page.next_cursor is None:
                return gone
            query = replace(query, cursor=page.next_cursor)


def archived_study(imaging_study: Json | None) -> bool:
    """Whether an ImagingStudy is the archive's: its id is its Study Instance UID."""
    if imaging_study is None:
        return False
    own = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{imaging_study.get('id')}"}
    return any({k: i.get(k) for k in own} == own for i in imaging_study.get("identifier") or [])
