"""What every DICOMweb route shares: its services, authentication, access, errors, audit.

Each request verifies the bearer token with the same verifier as the FHIR
API, is decided by the same ``AccessPolicy`` (DICOM studies are guarded as
the ImagingStudy resources they are), and is audited, under the Patient whose
study it reached (``Access``). Errors become a
response here, never an exception escaping to Starlette, so the CORS
middleware puts its headers on them too (viewers report a missing header on
an error as a CORS failure).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.accept_param import requested_accept
from dicomweb.blob_journal import InstanceUids, IntentJournal, ReconcileReport, reconcile
from dicomweb.blobstore import FileBlobStore
from dicomweb.decode_limit import DEFAULT_MAX_DECODED_BYTES
from dicomweb.dicom_xml import DICOM_XML
from dicomweb.ingest import IngestService
from dicomweb.qido import QidoError
from dicomweb.retrievals_in_flight import DELETE_GRACE, RetrievalsInFlight
from dicomweb.study_sync import StudySync
from dicomweb.transfer_syntax import MediaRange, NotAcceptable, weighted_values
from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.policy import AccessPolicy, compartment_filter
from fhir_server.access.roles import patient_of
from fhir_server.access.stored import Searcher, ids_matching, lookup_in, needs_store
from fhir_server.access.tokens import TokenVerifier, bearer_token
from fhir_server.audit import AuditRecord, AuditTrail
from fhir_server.errors import FhirError, Forbidden, NotFound
from fhir_server.search.ast import And, Compare, Node
from fhir_server.search.values import TokenValue
from fhir_server.storage.dicom_port import DicomIndex, StudyRow

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
IMAGING_STUDY = "ImagingStudy"


@dataclass(slots=True)
class Access:
    """One request's caller, and the FHIR Patient whose data it reached: what its
    audit record names, so that ``AuditEvent?patient=`` finds who read a patient's
    images though the reader's token names no patient (IHE BALP).

    ``handle`` makes one per request and hands it to the route's work. The
    check that lets a request into a study (``visible_study``) records that
    study's Patient as it passes, so a road into a study cannot forget to, and
    nothing looks the study up again for the audit (a DELETE could not: the
    study may be gone by then). A search records one only when it kept to one
    study and found something in it; STOW-RS, the one its instances were stored
    for when the archive knew it already (``stow.patient_stored_for``).
    """

    auth: AuthContext
    patient: str | None = None
    # the study it reached when its path names none (a STOW-RS to ``/studies`` of
    # one study's instances), for the record's ImagingStudy entity
    study: str | None = None

    def reached(self, study: StudyRow) -> None:
        self.patient = study.patient_ref


Work = Callable[[Access], Awaitable[Response]]


@dataclass(frozen=True)
class DicomwebServices:
    """Everything the routes use, built by the composition root."""

    index: DicomIndex
    blobs: FileBlobStore
    ingest: IngestService
    sync: StudySync | None
    policy: AccessPolicy
    verifier: TokenVerifier
    audit: AuditTrail
    base_url: str
    clock: Callable[[], datetime]
    max_results: int = 1000
    journal: IntentJournal | None = None
    temp_grace: float = 0.0
    # The FHIR store, for access rules that depend on FHIR records (a referrer's
    # own patients); without it such callers are refused.
    records: Searcher | None = None
    # WADO retrievals in flight per study, and how long a DELETE leaves them its files
    retrievals: RetrievalsInFlight = field(default_factory=RetrievalsInFlight)
    delete_grace: float = DELETE_GRACE
    # the most bytes one decoding of pixel data may produce (``decode_limit``)
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    def intent(self, uids: Sequence[InstanceUids]) -> AbstractAsyncContextManager[None]:
        """Bracket a change of these instances' blobs (``blob_journal``)."""
        if self.journal is None:
            return contextlib.nullcontext()
        return self.journal.intent(uids)

    async def reconcile(self) -> ReconcileReport:
        """Start-up: make the blob store agree with the index after an unclean stop."""
        if self.journal is None:
            return ReconcileReport()
        hold = self.ingest.locks.removing  # (another server may be storing their instances)
        grace = self.temp_grace
        return await reconcile(self.index, self.blobs, self.journal, temp_grace=grace, hold=hold)


# The forms a DICOM dataset response takes (PS3.18 §8.7.3.2, Table 8.7.3-2): DICOM
# JSON, or Native DICOM Model XML, a multipart of one document per dataset for
# search results and metadata (PS3.18 §10.6.3.3.1, §10.4.3.3.2) and a single
# document for the STOW-RS response (PS3.18 §10.5.3, store-instances-response-module).
DatasetMedia = Literal["json", "xml"]
XML_MULTIPART = f'multipart/related; type="{DICOM_XML}"'
_JSON_EXACT = frozenset({DICOM_JSON, "application/json"})
_MULTIPART_RANGES = frozenset({"multipart/related", "multipart/*"})


def dataset_media(request: Request, what: str, *, multipart: bool = True) -> DatasetMedia:
    """JSON or XML, as the ``accept`` query parameter, or else the Accept header,
    prefers (PS3.18 §8.3.3.1, §8.7.3.2); 406 when it admits neither.

    Each form takes the quality of the most specific range naming it (RFC 9110
    §12.5.1), so ``q=0`` excludes it even beside ``*/*``; XML only when liked
    better than JSON, which an absent or wildcard Accept gets. ``multipart``: XML
    is ``multipart/related; type="application/dicom+xml"``, else single-part
    ``application/dicom+xml`` (the STOW-RS response)."""
    accept = (requested_accept(request) or "").strip()
    if not accept:
        return "json"
    ranges = weighted_values(accept)
    json_q = _quality(ranges, _json_rank)
    xml_q = _quality(ranges, _xml_multipart_rank if multipart else _xml_single_rank)
    if max(json_q, xml_q) <= 0:
        xml = XML_MULTIPART if multipart else DICOM_XML
        raise NotAcceptable(f"{what} are {DICOM_JSON} or {xml}, not {accept!r}")
    return "xml" if xml_q > json_q else "json"


def _quality(ranges: Sequence[MediaRange], rank: Callable[[MediaRange], int]) -> float:
    """The q of the most specific range covering a form (0: none does, or q=0); of
    equally specific ones (``application/json`` beside ``application/dicom+json``),
    the highest."""
    best, quality = 0, 0.0
    for media in ranges:
        specificity = rank(media)
        if specificity > best:
            best, quality = specificity, media.q
        elif specificity == best and specificity:
            quality = max(quality, media.q)
    return quality


def _json_rank(media: MediaRange) -> int:
    if media.media_type in _JSON_EXACT:
        return 3
    return {"application/*": 2, "*/*": 1}.get(media.media_type, 0)


def _xml_single_rank(media: MediaRange) -> int:
    if media.media_type == DICOM_XML:
        return 3
    return {"application/*": 2, "*/*": 1}.get(media.media_type, 0)


def _xml_multipart_rank(media: MediaRange) -> int:
    if media.media_type == "*/*":
        return 1
    if media.media_type not in _MULTIPART_RANGES:
        return 0
    part = media.param("type")
    if part is None:  # any part type: XML is the only multipart form here
        return 2
    return 3 if part == DICOM_XML else 0


def error_body(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error response: a short JSON message (PS3.18 leaves the body to the server)."""
    body = orjson.dumps({"status": status, "message": message})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')


def gzip_preferred(accept_encoding: str | None) -> bool:
    """Whether to send gzip: acceptable (q > 0) and not liked less than identity
    (RFC 9110 §12.5.3)."""
    if not accept_encoding:
        return False
    quality = {coding.media_type: coding.q for coding in weighted_values(accept_encoding)}
    anything = quality.get("*")
    gzip = quality.get("gzip", quality.get("x-gzip", anything or 0.0))
    identity = quality.get("identity", anything)  # None: acceptable, with no stated preference
    return gzip > 0 and (identity is None or gzip >= identity)


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match matches the selected representation's ``etag``: ``*``
    (it exists), or one of the listed tags by weak comparison (RFC 9110 §13.1.2)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.removeprefix("W/") == etag for t in _ENTITY_TAG.findall(if_none_match))


def patient_scope(svc: DicomwebServices, auth: AuthContext, action: Interaction) -> Node | None:
    """The FHIR Patients whose studies a request may reach, as a filter on Patient
    (None: every study); Forbidden if nothing.

    Only an unrestricted grant, one Patient's ImagingStudy compartment
    (``_own_patient``), or a restriction to the studies of some Patients (a
    referrer's own) can be applied to the index, which knows each study's
    Patient; any other restriction fails closed.
    """
    where = svc.policy.search_filter(auth, IMAGING_STUDY, action)
    if where is None:
        return None
    own = _own_patient(svc.policy.compartment, auth, where)
    if own is not None:
        return _patient_is(own)
    patients = svc.policy.patient_scope(auth, IMAGING_STUDY, action)
    if patients is None or svc.records is None:
        raise Forbidden("this token's ImagingStudy access cannot be applied to DICOM data")
    return patients


async def study_scope(
    svc: DicomwebServices, auth: AuthContext, action: Interaction
) -> tuple[str, ...] | None:
    """The FHIR Patient ids a search is restricted to (None: every study)."""
    patients = patient_scope(svc, auth, action)
    if patients is None:
        return None
    one = _patient_named(patients)
    if one is not None:
        return (one,)
    if svc.records is None or not needs_store(patients):
        return ()  # (patient_scope refused these: fail closed all the same)
    return await ids_matching(svc.records, "Patient", patients)


def _own_patient(compartment: PatientCompartment, auth: AuthContext, where: Node) -> str | None:
    """The Patient whose ImagingStudy compartment is exactly what ``where`` reaches,
    if it is the caller's own: the launch patient of a ``patient/`` token, or the
    ``fhirUser`` Patient of a user whom the ``patient`` role caps to their own
    record (under ``user/`` scopes, signed in without a launch patient). Only an
    equal filter counts, so nothing reaches further than on the FHIR side."""
    for patient in (auth.patient, patient_of(auth.fhir_user)):
        if patient is not None and compartment_filter(compartment, IMAGING_STUDY, patient) == where:
            return patient
    return None


def _patient_is(patient: str) -> Node:
    return Compare("_id", "token", TokenValue(None, patient))


def _patient_named(patients: Node) -> str | None:
    """The id, when ``patients`` selects one Patient by id (``_patient_is``)."""
    if isinstance(patients, Compare) and isinstance(patients.value, TokenValue):
        patient = patients.value.code
        if patient is not None and patients == _patient_is(patient):
            return patient
    return None


async def visible_study(
    svc: DicomwebServices, access: Access, study_uid: str, action: Interaction
) -> StudyRow:
    """The study if it exists and the caller may reach it, its Patient recorded on
    ``access``; 404 otherwise (no probing)."""
    patients = patient_scope(svc, access.auth, action)
    study = await svc.index.study(study_uid)
    if study is None or not await _reaches(svc, patients, study.patient_ref):
        raise NotFound(f"study {study_uid} is not known")
    access.reached(study)
    return study


async def _reaches(svc: DicomwebServices, patients: Node | None, patient: str | None) -> bool:
    if patients is None:
        return True
    if patient is None:
        return False
    if svc.records is None or not needs_store(patients):
        return svc.policy.matches(patients, patient, ())
    return await lookup_in(svc.records)("Patient", And((_patient_is(patient), patients)))


def require_system_delete(svc: DicomwebServices, auth: AuthContext) -> None:
    """DELETE needs a ``system/`` scope granting delete on ImagingStudy."""
    granted = svc.policy.grants(auth, Interaction.DELETE, IMAGING_STUDY)
    if not any(g.scope.level == "system" and g.where is None for g in granted):
        raise Forbidden("deleting DICOM data needs a system/ImagingStudy delete scope")


def require_store(svc: DicomwebServices, auth: AuthContext) -> None:
    """STOW-RS needs unrestricted ImagingStudy create *and* update rights: an instance
    either starts a study or joins one already stored, and joining one changes it (its
    series, counts and FHIR ImagingStudy), which is an update."""
    for action in (Interaction.CREATE, Interaction.UPDATE):
        if svc.policy.search_filter(auth, IMAGING_STUDY, action) is not None:
            raise Forbidden(
                "storing DICOM data needs unrestricted ImagingStudy create and update rights"
            )


async def handle(
    svc: DicomwebServices,
    request: Request,
    interaction: str,
    work: Work,
    study_uid: str | None = None,
) -> Response:
    """Authenticate, run, map errors to statuses, audit (PS3.18 §8.5)."""
    access: Access | None = None
    try:
        token = bearer_token(request.headers.get("authorization"))
        access = Access(await svc.verifier.verify(token))
        response = await work(access)
    except FhirError as exc:
        response = error_body(exc.status, exc.diagnostics, exc.headers)
    except NotAcceptable as exc:
        response = error_body(406, str(exc))
    except QidoError as exc:
        response = error_body(400, str(exc))
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        response = error_body(500, "internal error")
    auth = access.auth if access is not None else None
    # a failed request showed nothing of whose data it would have been
    patient = access.patient if access is not None and response.status_code < 400 else None
    svc.audit.record(
        AuditRecord(
            interaction=interaction,
            status=response.status_code,
            moment=svc.clock(),
            auth=auth,
            resource_type=IMAGING_STUDY,
            resource_id=study_uid or (access.study if access is not None else None),
            query=f"{request.method} {request.url.path}?{request.url.query}",
            address=request.client.host if request.client else None,
            description=f"DICOMweb {request.method} {request.url.path}",
            patient=patient,
        )
    )
    await svc.audit.room()
    return response
