"""Late orders: link ImagingStudies to ServiceRequests that arrive after the images.

A change-log consumer (DESIGN.md, "Storage"): it reads the store's change log
from its durable position, and for every ServiceRequest version it sees it
collects the accession numbers that version and the one before it carried
(identifiers of type ACSN -- the same rule ``StudySync`` links by). Each study in the
DICOM index with one of those accession numbers is *relinked*: its
ImagingStudy's ``basedOn`` is set to the one ServiceRequest the accession
number finds now. So:

- an order created or updated after its images links them;
- an order whose accession number changes unlinks the old studies and links
  the new ones; a deleted order unlinks its studies;
- when two orders carry the same accession number, neither is linked (the
  link would be a guess), as at ingest.

Relinking compares before it writes, so replaying changes (a crash before the
position was saved) rewrites nothing. A failed rewrite goes to the sync retry
(``StudySync.pending``) and the consumer reads on; but that retry is only in
memory, and the start-up scan compares counts and Patients, not orders, so the
position *saved* stays before the batch until the study has left ``pending``:
after a stop, the order is read again. Only a failure to read the log or the
index stops the position from advancing.
"""

from __future__ import annotations

import logging

from dicomweb.change_cursor import ChangeCursor
from dicomweb.records import key_name, normal_values
from dicomweb.study_sync import V2_0203, StudySync, body_of, indexed_studies
from fhir_server.storage.base import HistoryQuery, Store, StoredVersion
from fhir_server.storage.dicom_port import KeyFilter

log = logging.getLogger(__name__)

CONSUMER = "order-links"
SERVICE_REQUEST = "ServiceRequest"
ACCESSION_KEY = key_name((0x00080050,))


def accessions(service_request: dict[str, object] | None) -> set[str]:
    """The accession numbers of a ServiceRequest: its identifiers of type ACSN."""
    if service_request is None:
        return set()
    identifiers = service_request.get("identifier")
    if not isinstance(identifiers, list):
        return set()
    return {
        str(i["value"])
        for i in identifiers
        if isinstance(i, dict) and i.get("value") and _is_accession(i.get("type"))
    }


def _is_accession(concept: object) -> bool:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("system") == V2_0203 and c.get("code") == "ACSN"
        for c in codings
    )


class OrderLinks:
    """The late-order consumer (see the module docstring)."""

    def __init__(self, store: Store, sync: StudySync, cursor: ChangeCursor) -> None:
        self._store = store
        self._sync = sync
        self._cursor = cursor
        self.position = 0
        self.resumed_from = 0  # the position ``load`` found: what a restart resumed at
        self._saved = 0
        # studies whose relink failed -> the position to read again from until written
        self._held: dict[str, int] = {}

    async def load(self) -> int:
        """Resume from the saved position -- from the start if the log is behind it
        (a store restored from an older backup): replaying is harmless, skipping is not."""
        saved = self._cursor.load()
        newest = await self._store.history(HistoryQuery(count=1))
        head = newest.versions[0].seq if newest.versions else 0
        self.position = self.resumed_from = self._saved = saved if saved <= head else 0
        return self.position

    async def step(self, limit: int = 1000) -> int:
        """Consume up to ``limit`` changes; how many there were."""
        changes = await self._store.changes(self.position, limit, SERVICE_REQUEST)
        numbers: set[str] = set()
        for version in changes:
            if version.resource_type == SERVICE_REQUEST:
                numbers |= await self._touched(version)
        for number in sorted(numbers):
            for uid in await self._studies_with(number):
                await self._sync.relink(uid)
                if uid in self._sync.pending:  # (a failed relink is retried from there)
                    self._held.setdefault(uid, self.position)
        if changes:
            self.position = changes[-1].seq
        await self._save()
        return len(changes)

    async def _save(self) -> None:
        """Save the position, but not past a batch whose relink is still pending."""
        self._held = {uid: at for uid, at in self._held.items() if uid in self._sync.pending}
        durable = min([self.position, *self._held.values()])
        if durable != self._saved:
            await self._cursor.save(durable)
            self._saved = durable

    async def _touched(self, version: StoredVersion) -> set[str]:
        """Accession numbers this version carries, or its predecessor carried."""
        numbers = accessions(body_of(version))
        if version.version > 1:
            before = await self._store.vread(version.resource_type, version.id, version.version - 1)
            numbers |= accessions(body_of(before))
        return numbers

    async def _studies_with(self, accession: str) -> list[str]:
        uids: list[str] = []
        for value in normal_values("SH", accession):
            match = KeyFilter(ACCESSION_KEY, "eq", (value,))
            uids.extend([s.uid async for s in indexed_studies(self._store.dicom, (match,))])
        return uids
