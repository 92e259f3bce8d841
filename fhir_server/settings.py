"""Settings, read once into one object by the command line and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def multi_core() -> bool:
    """More than one core: work beside the event loop then runs beside it."""
    return (os.cpu_count() or 1) > 1


def default_validation_workers() -> int:
    """Two worker processes when there is more than one core, else inline. A
    transaction's event loop does about half a worker's work per resource, so two
    keep it busy; more would wait on it. Two beat one on two cores too (measured:
    the loop often waits on the workers; docs/performance.md, "FHIR core")."""
    return 2 if multi_core() else 0


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a running server (see DESIGN.md, interface contract)."""

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    dicom_port: int = 11112
    dicom_aet: str = "RADHUB"
    mllp_port: int = 2575
    mongodb_uri: str | None = None
    base_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] = field(default=())
    max_body_bytes: int = 16 * 1024 * 1024
    audit_flush_interval: float = 0.2
    # the audit trail written by a process of its own (fhir_server.audit_process) when
    # there is more than one core, else in the server's process (audit.AuditLog)
    audit_process: bool = field(default_factory=multi_core)
    # processes validating large Bundles beside the event loop (0: validate inline)
    validation_workers: int = field(default_factory=lambda: default_validation_workers())
    # a different instance under a known SOP Instance UID replaces it (else 0x0111)
    dicom_overwrite: bool = False
    # the Patient identifier system when a DICOM study has no IssuerOfPatientID
    default_patient_system: str = "urn:radhub:patient-id"
    # (IssuerOfPatientID, identifier system): the system of a local issuer's Patient IDs
    patient_issuers: tuple[tuple[str, str], ...] = field(default=())
    # the IANA time zone of DICOM dates and times sent without TimezoneOffsetFromUTC
    # (an ImagingStudy's ``started`` needs an offset to keep its time); None: unknown
    dicom_timezone: str | None = None
    # QIDO-RS results per page at most (PS3.18 §8.3.4.4 lets the server cap ``limit``)
    qido_max_results: int = 1000
    # the most bytes one decoding of pixel data may produce (a rendered frame, frames,
    # a transcoded instance): 256 MiB holds an 8000x10000 RGB film scan; a small RLE
    # upload can declare gigabytes (dicomweb.decode_limit)
    max_decoded_bytes: int = 256 * 2**20
    # how often the archive reads the change log (late orders) when it is idle
    change_poll_interval: float = 0.5
    # the first delay before a failed ImagingStudy sync is retried (doubles up to a minute)
    sync_retry_interval: float = 2.0
    # how long a study's ingest must be quiet before its ImagingStudy is written (at the
    # latest every max(5 s, 10x this) while it keeps receiving)
    study_sync_delay: float = 0.4
    # seconds a DICOMweb DELETE leaves a study's files to retrievals already sending them
    delete_grace: float = 30.0
    # HTTP request heads (request line and header fields) take at most this many bytes,
    # else 431: a SMART bearer token (~1-8 KB) and a browser's cookies (at most ~4 KB each)
    # fit many times over; Envoy and AWS load balancers use 60-64 KiB
    http_header_limit: int = 64 * 1024
    # seconds a client has to send a request's head (408 after; a client sends it at once)
    http_header_timeout: float = 30.0
    # seconds a request body may stall before the request ends (as nginx's client_body_timeout;
    # longer than TCP's retransmission backoff on a lossy link, so only a dead client is cut)
    http_body_timeout: float = 60.0
    # a browser's sign-in session at the authorization server (smart.sessions) ends after
    # this many seconds unused (longer than an access token's hour, so a viewer renewing
    # at expiry finds it), and this many after the sign-in at the latest (a long shift)
    session_idle: int = 2 * 3600
    session_max: int = 10 * 3600

    @property
    def public_base(self) -> str:
        """The public origin, without a trailing slash."""
        if self.base_url:
            return self.base_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL, which is also the SMART ``aud``."""
        return f"{self.public_base}/fhir"
