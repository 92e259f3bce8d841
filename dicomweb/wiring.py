"""Builds the archive's services from what the composition root already has.

``fhir_server.app`` calls ``dicomweb_services`` once and mounts
``dicomweb_router`` at ``/dicomweb``; the DIMSE bridge takes the same
``IngestService`` and ``DicomIndex`` from the returned object.
"""

from __future__ import annotations

from pathlib import Path

from dicomweb.blob_journal import IntentJournal
from dicomweb.blobstore import FileBlobStore
from dicomweb.http_common import DicomwebServices
from dicomweb.ingest import IngestOptions, IngestService
from dicomweb.study_sync import StudySync
from fhir_server.access.tokens import TokenVerifier
from fhir_server.audit import AuditLog
from fhir_server.interactions.services import Services

BLOB_DIR = "blobs"
SHARED_TEMP_GRACE = 3600.0


def dicomweb_services(
    svc: Services,
    verifier: TokenVerifier,
    audit: AuditLog,
    data_dir: Path,
    public_base: str,
    *,
    overwrite: bool = False,
) -> DicomwebServices:
    """The archive's services: blobs under ``<data_dir>/blobs``, the store's DICOM index."""
    base = f"{public_base.rstrip('/')}/dicomweb"
    blobs = FileBlobStore(data_dir / BLOB_DIR)
    journal = IntentJournal(blobs.root)
    sync = StudySync(svc, base)
    options = IngestOptions(base_url=base, overwrite=overwrite)
    ingest = IngestService(svc.store.dicom, blobs, sync, options, journal)
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
        journal=journal,
        # the embedded store is one process: every temporary at start-up is a dead
        # write; processes sharing blobs (MongoDB) may have live ones
        temp_grace=0.0 if svc.store.name == "sqlite" else SHARED_TEMP_GRACE,
    )
