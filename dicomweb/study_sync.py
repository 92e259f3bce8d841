"""Keeps one FHIR ImagingStudy per indexed study, through the kernel's interactions.

Ingest does not write FHIR: it ``mark``s the studies it changed as pending and
acknowledges. ``sync_retry``'s loop writes each pending study once its ingest
has been quiet for a short delay (at the latest every few seconds while it
keeps receiving), so a study sent in many requests is written a few times, not
once per request; ``PendingStudies`` is the one place that decides when.

A write is one FHIR transaction under the archive's own ``system/`` context:
the Endpoint if missing, the Patient found or created by identifier
(PatientID in its issuer's namespace) from the DICOM demographics, the
ServiceRequest whose accession number (an identifier of type ACSN) is the
study's linked when there is exactly one and it is for the same Patient (the
same number on another patient's order is a mismatch to reconcile, not a
link; it is logged), and the ImagingStudy
mapped by ``imaging_study.map_study`` from the index rows (skipped when it
would not change). The Patient is then recorded on the index's study, which
patient-scoped DICOMweb access goes by, and each FHIR write is audited once
the transaction has committed (agent: the archive's context), under the
Patient it was for, so ``AuditEvent?patient=`` finds the filing of images
too. Writes are serialised (one lock), so an older read of the index never
overwrites a newer ImagingStudy.

Pending studies are only in memory; after a crash ``sync_retry``'s start-up
scan finds them again by comparing the index with the ImagingStudies.
``relink`` is what the change-log consumer (``order_links``) calls when an
order may have come, gone or changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from urllib.parse import quote

import orjson

from dicomweb.imaging_study import (
    PatientNamespaces,
    StudyLinks,
    accession_number,
    map_patient,
    map_study,
    patient_identifier,
    with_client_elements,
)
from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.audit import AuditRecord, AuditTrail
from fhir_server.errors import PreconditionFailed
from fhir_server.interactions import crud
from fhir_server.interactions.conditional import find_conditional
from fhir_server.interactions.services import Services
from fhir_server.storage.base import StoredVersion, Transaction
from fhir_server.storage.dicom_port import DicomIndex, DicomQuery, Json, KeyFilter, StudyRow

log = logging.getLogger(__name__)

ENDPOINT_ID = "radhub-dicomweb"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACCESSION_TYPE = f"{V2_0203}|ACSN"  # the identifier type of an accession number
IMAGING_STUDY = "ImagingStudy"
PAGE = 500
# the ``outcomeDesc`` of the sync's AuditEvents
SYNC_AUDIT = "DICOM archive: ImagingStudy sync"
_STATUS = {"create": 201, "update": 200, "delete": 204}


def archive_context() -> AuthContext:
    """The context the archive writes FHIR resources under."""
    return AuthContext("radhub-dicom-archive", None, ScopeSet.parse("system/*.cruds"))


def endpoint_resource(address: str) -> Json:
    """The Endpoint every ImagingStudy points to (R4 Endpoint, dicom-wado-rs)."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }


def body_of(version: StoredVersion | None) -> Json | None:
    """The resource JSON of a current, not deleted version, else None."""
    if version is None or version.deleted or version.body is None:
        return None
    body: Json = orjson.loads(version.body)
    return body


def _current(version: StoredVersion | None) -> bool:
    return version is not None and not version.deleted


def based_on(imaging_study: Json) -> str | None:
    """The order reference an ImagingStudy written by ``map_study`` carries."""
    refs = [r.get("reference") for r in imaging_study.get("basedOn") or []]
    return str(refs[0]) if refs and refs[0] else None


def matches_index(imaging_study: Json | None, study: StudyRow) -> bool:
    """Whether the ImagingStudy reflects the index's study (its counts and its
    Patient, recorded on the study after the write): the cheap test that tells,
    after a restart, which studies missed their sync."""
    subject = (imaging_study or {}).get("subject") or {}
    return (
        imaging_study is not None
        and study.patient_ref is not None
        and subject.get("reference") == f"Patient/{study.patient_ref}"
        and imaging_study.get("numberOfInstances") == study.instance_count
        and imaging_study.get("numberOfSeries") == study.series_count
    )


async def indexed_studies(
    index: DicomIndex, filters: tuple[KeyFilter, ...] = ()
) -> AsyncIterator[StudyRow]:
    """Every indexed study matching ``filters``, fetched a page at a time."""
    offset = 0
    while True:
        query = DicomQuery(level="study", study_filters=filters, limit=PAGE, offset=offset)
        page = await index.search(query)
        for match in page.matches:
            yield match.study
        if not page.more:
            return
        offset += PAGE


@dataclass
class _Entry:
    first: float  # when the study fell behind the index
    last: float  # its latest change
    urgent: bool = False  # due at once: nothing more is expected (delete, scan, flush)
    failures: int = 0
    retry_at: float = 0.0


@dataclass(frozen=True)
class SyncTiming:
    """When a pending study is due: ``delay`` after its last change, at the latest
    ``max_wait`` after its first; after a failure ``retry`` later, doubling up to
    ``ceiling`` while it keeps failing."""

    delay: float = 0.4
    max_wait: float = 5.0
    retry: float = 2.0
    ceiling: float = 60.0

    @classmethod
    def from_delay(cls, delay: float, retry: float) -> SyncTiming:
        """The timing for a debounce of ``delay`` (the wait cap grows with it)."""
        return cls(delay, max(5.0, 10 * delay), retry, max(60.0, retry))

    def due(self, entry: _Entry) -> float:
        """When ``entry`` is due (on the ``PendingStudies`` clock)."""
        if entry.urgent:
            return max(entry.first, entry.retry_at)
        quiet = min(entry.last + self.delay, entry.first + self.max_wait)
        return max(quiet, entry.retry_at)

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row."""
        return float(min(self.retry * 2.0 ** (failures - 1), self.ceiling))


class PendingStudies:
    """Studies whose ImagingStudy is behind the DICOM index: the one place that
    decides when each is written (``take_due``), for ingest, retries and the
    start-up scan alike. Only in memory: what it loses in a crash the scan finds."""

    def __init__(self, timing: SyncTiming, clock: Callable[[], float] = time.monotonic) -> None:
        self._timing = timing
        self._clock = clock
        self._waiting: dict[str, _Entry] = {}
        self._running: dict[str, _Entry] = {}
        self.changed = asyncio.Event()  # wakes the sync loop
        self._idle = asyncio.Event()
        self._idle.set()

    def mark(self, uids: Iterable[str], *, urgent: bool = False) -> None:
        """The studies changed (now); ``urgent``: write them without waiting for quiet."""
        now = self._clock()
        for uid in uids:
            entry = self._waiting.setdefault(uid, _Entry(now, now))
            entry.last = now
            entry.urgent = entry.urgent or urgent
            self._idle.clear()
        self.changed.set()

    def take_due(self) -> list[str]:
        """The studies due now (sorted), moved to in-flight until ``done``/``failed``."""
        now = self._clock()
        due = sorted(u for u, e in self._waiting.items() if self._timing.due(e) <= now)
        for uid in due:
            self._running[uid] = self._waiting.pop(uid)
        return due

    def done(self, uid: str) -> None:
        """The study's ImagingStudy was written from the index as it was when taken."""
        self._running.pop(uid, None)
        self._check_idle()

    def failed(self, uid: str) -> None:
        """Writing the study's ImagingStudy failed: due again after a backoff."""
        now = self._clock()
        before = self._running.pop(uid, None) or self._waiting.get(uid)
        failures = (before.failures if before else 0) + 1
        entry = self._waiting.setdefault(uid, _Entry(now, now, urgent=True))
        entry.failures = failures
        entry.retry_at = now + self._timing.backoff(failures)
        self._idle.clear()
        self.changed.set()

    def next_due(self) -> float | None:
        """Seconds until the next study is due (0: now), None when none waits."""
        if not self._waiting:
            return None
        soonest = min(self._timing.due(e) for e in self._waiting.values())
        return max(0.0, soonest - self._clock())

    async def settled(self) -> None:
        """Return once every pending study is written, cutting short the quiet wait
        (not a failure's backoff): what tests and an orderly hand-over wait for."""
        self.flush()
        await self._idle.wait()

    def flush(self) -> None:
        """Make every waiting study due now, but for a failure's backoff."""
        for entry in self._waiting.values():
            entry.urgent = True
        self.changed.set()

    def _check_idle(self) -> None:
        if not self._waiting and not self._running:
            self._idle.set()

    def __contains__(self, uid: object) -> bool:
        return uid in self._waiting or uid in self._running

    def __len__(self) -> int:
        return len(self._waiting.keys() | self._running.keys())


class AmbiguousPatient(Exception):
    """Several FHIR Patients have the study's patient identifier: which one the images
    are of is no guess for the archive to make (nor is a third Patient the answer).
    The study is written once one remains -- the duplicates merged or corrected --
    retried with the backoff of any failed sync, and meanwhile has no Patient on
    the index, so no patient-scoped token reaches it."""

    def __init__(self, system: str, found: str) -> None:
        # the Patient ID itself stays out of the log (it is the patient's record
        # number): the study UID the log names leads to it
        super().__init__(
            f"more than one Patient has the study's Patient ID in {system} ({found}); "
            "its ImagingStudy is written once one remains"
        )


@dataclass
class _Written:
    """What one ``write`` did, to record once its transaction has committed."""

    # study -> (its Patient, the study's patient key it was found from): ``set_patient``
    patients: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)  # study -> revision shown
    audit: list[AuditRecord] = field(default_factory=list)


class StudySync:
    """Writes Patients and ImagingStudies for the archive (see the module docstring)."""

    def __init__(
        self,
        svc: Services,
        dicomweb_base: str,
        patients: PatientNamespaces,
        pending: PendingStudies,
        audit: AuditTrail,
        zone: tzinfo | None = None,
    ) -> None:
        self._svc = svc
        self._zone = zone  # of DICOM times without an offset (``fhir_started``)
        self._audit = audit
        self._base = dicomweb_base
        self._patients = patients
        self._auth = archive_context()
        self._lock = asyncio.Lock()
        self.pending = pending

    def mark(self, study_uids: Iterable[str]) -> None:
        """The studies' index rows changed: write their ImagingStudies soon (ingest's
        hand-off; it costs the STOW request nothing)."""
        self.pending.mark(study_uids)

    async def settled(self) -> None:
        """Return once no study is pending (``PendingStudies.settled``)."""
        await self.pending.settled()

    async def sync(self, study_uids: Iterable[str]) -> None:
        """Write (or remove) the ImagingStudy of each study now; on failure the
        studies go back to ``pending`` (retried with backoff) and the error propagates."""
        uids = list(dict.fromkeys(study_uids))
        try:
            await self.write(uids)
        except BaseException:
            for uid in uids:
                self.pending.failed(uid)
            raise

    async def write(self, study_uids: list[str]) -> None:
        """One FHIR transaction for ``study_uids``, then its audit records and the
        studies' Patients on the index."""
        async with self._lock:
            done = _Written()
            async with self._svc.store.transaction() as tx:
                endpoint = await self._ensure_endpoint(tx, done)
                for uid in study_uids:
                    await self._sync_one(tx, uid, endpoint, done)
            for record in done.audit:
                self._audit.record(record)
            index = self._svc.store.dicom
            for uid, (patient, key) in done.patients.items():
                await index.set_patient(uid, patient, key)
            for uid, revision in done.revisions.items():
                await index.mark_synced(uid, revision)
            await self._audit.room()

    async def relink(self, study_uid: str) -> bool:
        """Rewrite the study's ImagingStudy if its ``basedOn`` is not the order its
        accession number finds now (or it is missing); whether it was rewritten.
        A failed rewrite is left to the retry (``pending``), not raised."""
        study = await self._svc.store.dicom.study(study_uid)
        if study is None:
            return False
        async with self._svc.store.transaction() as tx:
            current = body_of(await tx.current(IMAGING_STUDY, study_uid))
            wanted = await self._order(tx, study.attrs, study.patient_ref)
        if current is not None and based_on(current) == wanted:
            return False
        try:
            await self.sync([study_uid])
        except Exception:
            log.warning("relinking ImagingStudy %s failed; it will be retried", study_uid)
            return False
        return True

    async def in_sync(self, study: StudyRow) -> bool:
        """Whether the study's ImagingStudy was written from its latest revision and
        reflects the index (``matches_index``)."""
        if study.synced_revision < study.revision:
            return False
        current = await self._svc.store.read(IMAGING_STUDY, study.uid)
        return matches_index(body_of(current), study)

    async def _ensure_endpoint(self, tx: Transaction, done: _Written) -> str:
        """The Endpoint, written when it is missing or names another address (the
        server's ``--base-url`` changed); what a client added to it is kept."""
        current = body_of(await tx.current("Endpoint", ENDPOINT_ID))
        wanted = endpoint_resource(self._base)
        if current is None or current.get("address") != wanted["address"]:
            kept = {} if current is None else {k: v for k, v in current.items() if k != "meta"}
            resource = kept | wanted
            await crud.update_in(tx, self._svc, self._auth, "Endpoint", ENDPOINT_ID, resource)
            interaction = "create" if current is None else "update"
            self._note(done, interaction, "Endpoint", ENDPOINT_ID, None)
        return f"Endpoint/{ENDPOINT_ID}"

    async def _sync_one(self, tx: Transaction, uid: str, endpoint: str, done: _Written) -> None:
        """Write (or remove) one study's ImagingStudy, noting in ``done`` what it wrote,
        the revision it was written from, and a Patient the index lacks."""
        index = self._svc.store.dicom
        study = await index.study(uid)
        current = body_of(await tx.current(IMAGING_STUDY, uid))
        if study is None:
            if current is not None:
                await crud.delete_in(tx, self._svc, self._auth, IMAGING_STUDY, uid)
                self._note(done, "delete", IMAGING_STUDY, uid, _subject_id(current))
            return
        patient = study.patient_ref
        if patient is None or not _current(await tx.current("Patient", patient)):
            # unknown yet, or deleted since (FHIR DELETE does not ask who refers to
            # it): the Patient with the study's identifier, found or made again
            patient = await self._patient_in(tx, study.attrs, done)
            done.patients[uid] = (patient, study.patient_key)
        links = StudyLinks(
            patient=f"Patient/{patient}",
            service_request=await self._order(tx, study.attrs, patient),
            endpoint=endpoint,
            zone=self._zone,
        )
        mapped = map_study(study, await index.series_of(uid), await index.instances(uid), links)
        resource = with_client_elements(mapped, current)
        if current is None or not unchanged(current, resource):  # (a replay: no new version)
            await crud.update_in(tx, self._svc, self._auth, IMAGING_STUDY, uid, resource)
            interaction = "create" if current is None else "update"
            self._note(done, interaction, IMAGING_STUDY, uid, patient)
        done.revisions[uid] = study.revision

    def _note(
        self, done: _Written, interaction: str, resource_type: str, id: str, patient: str | None
    ) -> None:
        """An audit record of one of the write's FHIR changes, for after its commit."""
        done.audit.append(
            AuditRecord(
                interaction=interaction,
                status=_STATUS[interaction],
                moment=self._svc.clock(),
                auth=self._auth,
                resource_type=resource_type,
                resource_id=id,
                description=SYNC_AUDIT,
                patient=patient,
            )
        )

    async def _patient_in(self, tx: Transaction, study_attrs: Json, done: _Written) -> str:
        system, value = patient_identifier(study_attrs, self._patients)
        resource = map_patient(study_attrs, system, value)
        # escaped: a comma in a Patient ID would make it two IDs, one in any system
        criteria = f"identifier={quote(_escaped(system) + '|' + _escaped(value), safe=':/')}"
        try:
            outcome = await crud.create_in(
                tx, self._svc, self._auth, resource, if_none_exist=criteria
            )
        except PreconditionFailed as exc:
            raise AmbiguousPatient(system, exc.diagnostics) from None
        assert outcome.version is not None
        if outcome.created:  # (from the DICOM demographics)
            self._note(done, "create", "Patient", outcome.version.id, outcome.version.id)
        return outcome.version.id

    async def _order(self, tx: Transaction, study_attrs: Json, patient: str | None) -> str | None:
        """The one order with the study's accession number, if it is for ``patient``."""
        accession = accession_number(study_attrs)
        if not accession or patient is None:
            return None
        criteria = f"identifier:of-type={quote(ACCESSION_TYPE + '|' + _escaped(accession))}"
        found = await find_conditional(tx, self._svc, self._auth, "ServiceRequest", criteria)
        if len(found) != 1:
            return None
        subject = ((body_of(found[0]) or {}).get("subject") or {}).get("reference")
        if subject != f"Patient/{patient}":
            log.warning(
                "ServiceRequest/%s has the accession number of a study of Patient/%s but is "
                "for %s: not linked",
                found[0].id,
                patient,
                subject,
            )
            return None
        return f"ServiceRequest/{found[0].id}"


def _subject_id(imaging_study: Json) -> str | None:
    """The id of the Patient an ImagingStudy is for, if it names one by reference."""
    reference = (imaging_study.get("subject") or {}).get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        return reference.removeprefix("Patient/")
    return None


def _escaped(value: str) -> str:
    """A token search value with FHIR's separators escaped (R4 search §3.1.1.2)."""
    for special in ("\\", ",", "|", "$"):
        value = value.replace(special, "\\" + special)
    return value


def unchanged(current: Json, resource: Json) -> bool:
    """Whether a stored resource already says what ``resource`` says (meta aside: what
    of it ``resource`` has, it has from ``current``)."""
    return {k: v for k, v in current.items() if k != "meta"} == {
        k: v for k, v in resource.items() if k != "meta"
    }
