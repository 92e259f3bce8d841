"""Builds the archive's services from what the composition root already has.

``fhir_server.app`` calls ``dicomweb_archive`` once, mounts
``dicomweb_router`` over its ``services`` at ``/dicomweb``, and starts and
stops its ``tasks`` (late orders, the ImagingStudy sync) in the app's lifespan; the DIMSE
bridge takes the same ``IngestService`` and ``DicomIndex`` from ``services``.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from dicomweb.archive_locks import ArchiveLocks
from dicomweb.background import ArchiveTasks
from dicomweb.blob_journal import IntentJournal
from dicomweb.blobstore import FileBlobStore
from dicomweb.change_cursor import ChangeCursor
from dicomweb.http_common import DicomwebServices
from dicomweb.imaging_study import PatientNamespaces
from dicomweb.ingest import IngestOptions, IngestService
from dicomweb.order_links import CONSUMER, OrderLinks
from dicomweb.retrievals_in_flight import RetrievalsInFlight
from dicomweb.shared_locks import LOCK_DIR, FileLocks
from dicomweb.study_sync import PendingStudies, StudySync, SyncTiming
from dicomweb.sync_retry import SyncRetry
from fhir_server.access.tokens import TokenVerifier
from fhir_server.audit import AuditTrail
from fhir_server.interactions.services import Services
from fhir_server.settings import Settings

BLOB_DIR = "blobs"
# the archive's own durable state (change-log positions) beside the blobs
STATE_DIR = "dicomweb"
SHARED_TEMP_GRACE = 3600.0
# what ingest runs in the server's worker processes (``records.describe_many``):
# imported as each worker starts, not when the first STOW arrives
WORKER_MODULES = ("dicomweb.records",)


def dicomweb_base(settings: Settings) -> str:
    """The public DICOMweb base URL."""
    return f"{settings.public_base}/dicomweb"


@dataclass(frozen=True)
class Archive:
    """What the composition root mounts (``services``) and runs (``tasks``)."""

    services: DicomwebServices
    tasks: ArchiveTasks


def dicomweb_archive(
    svc: Services, verifier: TokenVerifier, audit: AuditTrail, settings: Settings
) -> Archive:
    """The archive configured by ``settings`` (see the module docstring)."""
    timing = SyncTiming.from_delay(settings.study_sync_delay, settings.sync_retry_interval)
    pending = PendingStudies(timing)
    patients = PatientNamespaces(settings.default_patient_system, dict(settings.patient_issuers))
    zone = ZoneInfo(settings.dicom_timezone) if settings.dicom_timezone else None
    sync = StudySync(svc, dicomweb_base(settings), patients, pending, audit, zone)
    services = dicomweb_services(svc, verifier, audit, settings, sync)
    cursor = ChangeCursor(settings.data_dir / STATE_DIR, CONSUMER)
    links = OrderLinks(svc.store, sync, cursor)
    retry = SyncRetry(svc, sync)
    return Archive(services, ArchiveTasks(links, retry, settings.change_poll_interval))


def dicomweb_services(
    svc: Services,
    verifier: TokenVerifier,
    audit: AuditTrail,
    settings: Settings,
    sync: StudySync,
) -> DicomwebServices:
    """The archive's services: blobs under ``<data_dir>/blobs``, the store's DICOM index."""
    base = dicomweb_base(settings)
    blobs = FileBlobStore(settings.data_dir / BLOB_DIR)
    journal = IntentJournal(blobs.root)
    options = IngestOptions(
        base_url=base,
        overwrite=settings.dicom_overwrite,
        describe_lanes=max(1, svc.workers.size),
    )
    # the embedded store is one process; processes sharing blobs (MongoDB) exclude
    # each other too
    one_process = svc.store.name == "sqlite"
    shared = None if one_process else FileLocks(blobs.root / LOCK_DIR)
    ingest = IngestService(
        svc.store.dicom, blobs, sync, options, journal, svc.workers.run, ArchiveLocks(shared)
    )
    return DicomwebServices(
        index=svc.store.dicom,
        blobs=blobs,
        ingest=ingest,
        sync=sync,
        policy=svc.policy,
        verifier=verifier,
        audit=audit,
        base_url=base,
        clock=svc.clock,
        max_results=settings.qido_max_results,
        max_decoded_bytes=settings.max_decoded_bytes,
        journal=journal,
        # one process: every temporary at start-up is a dead write; processes
        # sharing blobs may have live ones
        temp_grace=0.0 if one_process else SHARED_TEMP_GRACE,
        records=svc.store,
        delete_grace=settings.delete_grace,
        retrievals=RetrievalsInFlight(shared),
    )
