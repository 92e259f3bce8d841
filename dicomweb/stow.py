"""STOW-RS over HTTP: ``POST /studies[/{study}]`` (PS3.18 §10.5).

The request body is parsed part by part as it arrives and each part streams
straight into the ingest pipeline, so memory stays bounded whatever the body
size. The response is the Store Instances Response Module in DICOM JSON
(PS3.18 §10.5.3): RetrieveURL, ReferencedSOPSequence (each with its
RetrieveURL) and FailedSOPSequence (each with its FailureReason); 200 when
all were stored, 202 when some failed, 409 when none was stored, 400 for a
malformed body, 415 for a media type other than ``application/dicom`` parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.blobstore import Chunk
from dicomweb.http_common import DICOM_JSON, DicomwebServices, require_store
from dicomweb.ingest import Failed, IngestReport, Stored
from dicomweb.multipart import MultipartError, boundary_of, iter_parts, parse_content_type
from fhir_server.access.context import AuthContext
from fhir_server.errors import InvalidRequest, UnsupportedMediaType
from fhir_server.storage.dicom_port import Json

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
DICOM = "application/dicom"


def _boundary(request: Request) -> str:
    header = request.headers.get("content-type", "")
    content_type = parse_content_type(header)
    if content_type.media_type != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related, not {header!r}")
    part_type = content_type.param("type")
    if part_type is not None and part_type.lower() != DICOM:
        raise UnsupportedMediaType(f"STOW-RS here takes {DICOM} parts, not {part_type!r}")
    try:
        return boundary_of(content_type)
    except MultipartError as exc:
        raise InvalidRequest(str(exc)) from exc


class _UnsupportedPart(Exception):
    """A part of another media type than application/dicom."""


async def _dicom_parts(request: Request, boundary: str) -> AsyncIterator[AsyncIterable[Chunk]]:
    async for part in iter_parts(request.stream(), boundary):
        media = part.content_type(DICOM).media_type
        if media != DICOM:
            raise _UnsupportedPart(media)
        yield part.body


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
    if target is not None:
        out[RETRIEVE_URL] = {"vr": "UR", "Value": [_url(base, target)]}
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
    svc: DicomwebServices, request: Request, auth: AuthContext, study_uid: str | None
) -> Response:
    """Store Instances transaction (PS3.18 §10.5)."""
    require_store(svc, auth)
    boundary = _boundary(request)
    try:
        report = await svc.ingest.ingest(_dicom_parts(request, boundary), study_uid)
    except MultipartError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    except _UnsupportedPart as exc:
        raise UnsupportedMediaType(f"a part is {exc}, not {DICOM}") from exc
    if not report.stored and not report.failed:
        raise InvalidRequest("the request holds no instance")
    body = orjson.dumps(response_dataset(svc.base_url, report, study_uid))
    return Response(body, status_code=response_status(report), media_type=DICOM_JSON)
