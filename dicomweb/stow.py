"""STOW-RS over HTTP: ``POST /studies[/{study}]`` (PS3.18 §10.5).

The request body is parsed part by part as it arrives and each part streams
straight into the ingest pipeline, so memory stays bounded whatever the body
size. The response is the Store Instances Response Module in DICOM JSON, or in
Native DICOM Model XML when the client prefers ``application/dicom+xml``
(PS3.18 §10.5.3): RetrieveURL, ReferencedSOPSequence (each with its
RetrieveURL) and FailedSOPSequence (each with its FailureReason, and why in
words in a ``Warning: 299`` header per failed instance); 200 when
all were stored, 202 when some failed, 409 when none was stored, 415 for a
request that is not ``multipart/related; type="application/dicom"`` or whose body
has a content coding (gzip), 400 for a malformed Content-Type, 406 when the client
accepts neither form of the response.

A part of another media type, or with a malformed Content-Type, is refused on
its own (0xC000) and the parts after it are read. A body that breaks off (a
part cut short, no closing delimiter, a malformed part header) ends the
request where it broke: the parts received whole before it are stored or
refused as usual, and the break is one more failed item (0xC000), so the
response names every instance that was stored. Only when nothing was stored
is the answer 400. A client that disconnects mid-body is such a break.

The request's AuditEvent names the FHIR Patient the instances were stored
for when the index knows it already (``patient_stored_for``), and the study
they went into when they went into one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomweb.blobstore import Chunk
from dicomweb.dicom_xml import DICOM_XML, native_xml
from dicomweb.http_common import (
    DICOM_JSON,
    Access,
    DicomwebServices,
    dataset_media,
    require_store,
)
from dicomweb.ingest import Failed, Incoming, IngestReport, Stored
from dicomweb.ingest_parse import CANNOT_UNDERSTAND, InstanceRejected
from dicomweb.multipart import MultipartError, boundary_of, iter_parts, parse_content_type
from dicomweb.warning_headers import bounded, warning_header
from fhir_server.errors import InvalidRequest, UnsupportedMediaType
from fhir_server.storage.dicom_port import DicomIndex, Json

log = logging.getLogger(__name__)

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
DICOM = "application/dicom"
# a client that went away mid-body is a body that broke off: no response reaches
# it, but the outcome is logged and audited as such, not as a server error
CLIENT_GONE = "the client closed the connection before the body ended"


def _check_content_coding(request: Request) -> None:
    """415 for a body under a content coding (gzip...): its parts cannot be read as
    they arrive, and none is undone here (RFC 9110 §15.5.16; ``Accept-Encoding``
    in the answer says what would do, §12.5.3)."""
    header = request.headers.get("content-encoding", "")
    codings = [c.strip() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
    if codings:
        raise UnsupportedMediaType(
            f"STOW-RS takes no content coding; the body is {', '.join(codings)}-encoded",
            headers={"Accept-Encoding": "identity"},
        )


def _boundary(request: Request) -> str:
    header = request.headers.get("content-type", "")
    try:
        content_type = parse_content_type(header)
    except MultipartError as exc:  # a malformed header, whatever its media type
        raise InvalidRequest(f"malformed Content-Type: {exc}") from exc
    if content_type.media_type != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related, not {header!r}")
    part_type = content_type.param("type")
    if part_type is not None and part_type.lower() != DICOM:
        raise UnsupportedMediaType(f"STOW-RS here takes {DICOM} parts, not {part_type!r}")
    try:
        return boundary_of(content_type)
    except MultipartError as exc:
        raise InvalidRequest(str(exc)) from exc


@dataclass
class _BodyBreak:
    """Where the multipart body broke off, if it did."""

    message: str | None = None
    inside_part: bool = False  # then that part's own failure already reports it


async def _dicom_parts(
    request: Request, boundary: str, broke: _BodyBreak
) -> AsyncIterator[Incoming]:
    parts = iter_parts(request.stream(), boundary)
    try:
        while broke.message is None:
            try:
                part = await anext(parts)
            except StopAsyncIteration:
                return
            except MultipartError as exc:
                broke.message = str(exc)
                return
            except ClientDisconnect:
                broke.message = CLIENT_GONE
                return
            try:
                media = part.content_type(DICOM).media_type
            except MultipartError as exc:
                yield InstanceRejected(CANNOT_UNDERSTAND, f"a part's Content-Type: {exc}")
                continue
            if media != DICOM:
                yield InstanceRejected(CANNOT_UNDERSTAND, f"a part is {media}, not {DICOM}")
            else:
                yield _whole(part.body, broke)
    finally:
        await parts.aclose()


async def _whole(body: AsyncIterable[Chunk], broke: _BodyBreak) -> AsyncIterator[Chunk]:
    """The part's bytes; a part cut short is refused (it cannot be known whole)."""
    try:
        async for chunk in body:
            yield chunk
    except (MultipartError, ClientDisconnect) as exc:
        why = str(exc) or CLIENT_GONE
        broke.message, broke.inside_part = why, True
        raise InstanceRejected(CANNOT_UNDERSTAND, f"the part is incomplete: {why}") from exc


def _url(base: str, *uids: str) -> str:
    levels = ("studies", "series", "instances")
    return base + "".join(f"/{level}/{uid}" for level, uid in zip(levels, uids, strict=False))


def _referenced(base: str, item: Stored) -> Json:
    return {
        REFERENCED_SOP_CLASS: {"vr": "UI", "Value": [item.sop_class_uid]},
        REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [item.sop_uid]},
        RETRIEVE_URL: {
            "vr": "UR",
            "Value": [_url(base, item.study_uid, item.series_uid, item.sop_uid)],
        },
    }


def _failed(item: Failed) -> Json:
    out: Json = {FAILURE_REASON: {"vr": "US", "Value": [item.reason]}}
    if item.sop_class_uid:
        out[REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [item.sop_class_uid]}
    if item.sop_uid:
        out[REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [item.sop_uid]}
    return out


def response_dataset(base: str, report: IngestReport, study_uid: str | None) -> Json:
    """The Store Instances Response Module (PS3.18 §10.5.3, Table 10.5.3-1)."""
    out: Json = {}
    studies = {s.study_uid for s in report.stored}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    # Type 2 (PS3.18 Table I.1-1): present, empty when no one study holds them all
    out[RETRIEVE_URL] = (
        {"vr": "UR", "Value": [_url(base, target)]} if target is not None else {"vr": "UR"}
    )
    out[FAILED_SOP_SEQUENCE] = (
        {"vr": "SQ", "Value": [_failed(f) for f in report.failed]}
        if report.failed
        else {"vr": "SQ"}
    )
    out[REFERENCED_SOP_SEQUENCE] = (
        {"vr": "SQ", "Value": [_referenced(base, s) for s in report.stored]}
        if report.stored
        else {"vr": "SQ"}
    )
    return out


def response_status(report: IngestReport) -> int:
    """200 all stored, 202 some failed, 409 none stored (PS3.18 §10.5.3.1)."""
    if not report.failed:
        return 200
    return 202 if report.stored else 409


async def store_instances(
    svc: DicomwebServices, request: Request, access: Access, study_uid: str | None
) -> Response:
    """Store Instances transaction (PS3.18 §10.5)."""
    require_store(svc, access.auth)
    _check_content_coding(request)
    boundary = _boundary(request)
    # (a 406 comes before any part is read)
    media = dataset_media(request, "STOW-RS responses", multipart=False)
    broke = _BodyBreak()
    report = await svc.ingest.ingest(_dicom_parts(request, boundary, broke), study_uid)
    if broke.message is not None:
        if not report.stored:
            raise InvalidRequest(f"malformed multipart body: {broke.message}")
        if not broke.inside_part:
            message = f"the body broke off after the last part: {broke.message}"
            report.failed.append(Failed(CANNOT_UNDERSTAND, message))
    if not report.stored and not report.failed:
        raise InvalidRequest("the request holds no instance")
    studies = stored_studies(report)
    access.patient = await patient_stored_for(svc.index, studies)
    if study_uid is None and len(studies) == 1:
        access.study = studies[0]
    dataset = response_dataset(svc.base_url, report, study_uid)
    status = response_status(report)
    if media == "xml":  # one document, not multipart (PS3.18 §10.5.3)
        response = Response(native_xml(dataset), status_code=status, media_type=DICOM_XML)
    else:
        response = Response(orjson.dumps(dataset), status_code=status, media_type=DICOM_JSON)
    for text in failure_warnings(report) + stored_warnings(report):
        response.headers.append("Warning", warning_header(text))
    return response


def stored_studies(report: IngestReport) -> list[str]:
    """The studies the stored instances went into, each once, in UID order."""
    return sorted({s.study_uid for s in report.stored})


async def patient_stored_for(index: DicomIndex, studies: list[str]) -> str | None:
    """The one FHIR Patient instances stored into ``studies`` were stored for, for the
    audit record (IHE BALP), when the index knows it of each study; else None.

    A study stored before knows its Patient (``StudyRow.patient_ref``). A study
    new to the archive has none yet: the ImagingStudy sync finds or creates its
    Patient later, in the background, and nothing is guessed here. Finding it by
    the DICOM Patient ID now would repeat the sync's own resolution on every
    STOW (a FHIR search per new study, which could still find nothing: the sync
    may be the one to create it); the study's ImagingStudy names it once
    written. A request of several studies names their Patient only if it is
    one and known for all. One index read per distinct study (the ingest
    report does not carry the Patient), after the instances are stored, so a
    failed read costs the audit its Patient, never the client its answer.
    """
    patients: set[str] = set()
    for uid in studies:
        try:
            study = await index.study(uid)
        except Exception:
            log.exception("could not find the patient of study %s for the audit", uid)
            return None
        if study is None or study.patient_ref is None:
            return None  # (a study gone already, or new: see above)
        patients.add(study.patient_ref)
        if len(patients) > 1:
            return None
    return next(iter(patients), None)


def stored_warnings(report: IngestReport) -> tuple[str, ...]:
    """What a sender should know of instances stored all the same: a Specific
    Character Set the archive does not know (``character_sets``)."""
    texts = [f"{s.sop_uid}: {s.warning}" for s in report.stored if s.warning]
    return bounded(texts, "warnings")


def failure_warnings(report: IngestReport) -> tuple[str, ...]:
    """Why each instance failed, in words: the Failed SOP Sequence holds a code only,
    and 0xC000 alone does not tell a sender what to mend."""
    texts = [f"{f.sop_uid}: {f.message}" if f.sop_uid else f.message for f in report.failed]
    return bounded(texts, "failures")
