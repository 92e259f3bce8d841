"""WADO-RS over HTTP: instances, metadata, frames and bulk data (PS3.18 §10.4).

Instances are streamed from the blob store part by part, in the transfer
syntax negotiated per instance (``transfer_syntax.negotiate``; Explicit VR
Little Endian by default, transcoded when stored otherwise and decodable;
406 when an instance cannot be served as asked). Metadata comes from the
index's precomputed documents, never from the files, gzip-compressed when the
client accepts it, with an ETag honouring If-None-Match.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from pydicom import dcmread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.dicom_json import parse_tag_path
from dicomweb.http_common import DICOM_JSON, DicomwebServices, visible_study
from dicomweb.multipart import OutPart, new_boundary, related_content_type, write_parts
from dicomweb.qido_rs import check_json_accept
from dicomweb.render import RenderError, decoded_frame, native_frame_range
from dicomweb.transfer_syntax import (
    NotAcceptable,
    negotiate,
    parse_accept,
    transcode_to_explicit_le,
)
from fhir_server.access.context import AuthContext, Interaction
from fhir_server.errors import InvalidRequest, NotFound
from fhir_server.storage.dicom_port import InstanceRow

OCTET = "application/octet-stream"
_OCTET_RANGES = (OCTET, "*/*", "application/*")
Uids = tuple[str, str | None, str | None]
PIXEL_DATA = 0x7FE00010


async def instance_rows(
    svc: DicomwebServices, auth: AuthContext, study: str, series: str | None, sop: str | None
) -> list[InstanceRow]:
    """The instances in scope, after the access check; 404 when none."""
    await visible_study(svc, auth, study, Interaction.READ)
    rows = await svc.index.instances(study, series, sop)
    if not rows:
        raise NotFound("no such series or instance")
    return rows


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


def instance_part(svc: DicomwebServices, row: InstanceRow, ts: str) -> OutPart:
    headers = (("Content-Location", _instance_url(svc, row)),)
    content_type = f"application/dicom; transfer-syntax={ts}"
    if ts == row.transfer_syntax_uid:
        return OutPart(content_type, svc.blobs.open(row.blob.key), headers)
    return OutPart(content_type, _transcoded(svc.blobs.path_for(row.blob.key)), headers)


async def _transcoded(path: Path) -> AsyncIterator[bytes]:
    yield await asyncio.to_thread(transcode_to_explicit_le, path)


def _instance_url(svc: DicomwebServices, row: InstanceRow) -> str:
    return f"{svc.base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.uid}"


async def retrieve(
    svc: DicomwebServices,
    request: Request,
    auth: AuthContext,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    """Retrieve a study, series or instance as multipart/related (PS3.18 §10.4.1.1)."""
    rows = await instance_rows(svc, auth, study, series, sop)
    accept = request.headers.get("accept")
    chosen = [negotiate(accept, row.transfer_syntax_uid) for row in rows]
    boundary = new_boundary()
    parts = [instance_part(svc, row, ts) for row, ts in zip(rows, chosen, strict=True)]
    single = chosen[0] if len(set(chosen)) == 1 else None
    media = related_content_type(boundary, "application/dicom", single)
    return StreamingResponse(write_parts(parts, boundary), media_type=media)


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


async def metadata(
    svc: DicomwebServices,
    request: Request,
    auth: AuthContext,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    """Retrieve metadata from the precomputed documents (PS3.18 §10.4.1.1.2)."""
    check_json_accept(request)
    await visible_study(svc, auth, study, Interaction.READ)
    docs = await svc.index.metadata(study, series, sop)
    if not docs:
        raise NotFound("no such series or instance")
    body = b"[" + b",".join(docs) + b"]"
    etag = _etag(body)
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "private, no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = await asyncio.to_thread(gzip.compress, body, 5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError as exc:
        raise InvalidRequest(f"invalid frame list {text!r}") from exc
    if not numbers or min(numbers) < 1:
        raise InvalidRequest(f"invalid frame list {text!r}")
    return numbers


def check_octet_accept(request: Request) -> None:
    """Frames and bulk data are served uncompressed (application/octet-stream)."""
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return
    for media in parse_accept(accept):
        inner = media.param("type") if media.media_type == "multipart/related" else None
        # dicomweb-client asks for frames as multipart/related; type="*/*"
        if media.media_type in _OCTET_RANGES or inner is None or inner in _OCTET_RANGES:
            ts = media.param("transfer-syntax")
            if ts in (None, "*", "1.2.840.10008.1.2.1"):
                return
    raise NotAcceptable(f"frames are served as {OCTET} (uncompressed), not {accept!r}")


async def _frame_bytes(svc: DicomwebServices, row: InstanceRow, frame: int) -> bytes:
    if frame > int(row.extra.get("frames") or 0):
        raise NotFound(f"instance {row.uid} has no frame {frame}")
    try:
        span = native_frame_range(row.extra, row.transfer_syntax_uid, frame)
        if span is not None:
            chunks = svc.blobs.open(row.blob.key, offset=span[0], length=span[1])
            return b"".join([c async for c in chunks])
        return await asyncio.to_thread(decoded_frame, svc.blobs.path_for(row.blob.key), frame)
    except RenderError as exc:
        raise NotFound(str(exc)) from exc


async def frames(
    svc: DicomwebServices, request: Request, auth: AuthContext, uids: Uids, frame_list: str
) -> Response:
    """Retrieve frames, uncompressed, as multipart/related (PS3.18 §10.4.1.1.3)."""
    check_octet_accept(request)
    numbers = _frame_numbers(frame_list)
    (row,) = await instance_rows(svc, auth, uids[0], uids[1], uids[2])
    for n in numbers:  # fail before the response starts, not in the middle of it
        if n > int(row.extra.get("frames") or 0):
            raise NotFound(f"instance {row.uid} has no frame {n}")
    boundary = new_boundary()

    async def parts() -> AsyncIterator[OutPart]:
        for n in numbers:
            data = await _frame_bytes(svc, row, n)
            location = f"{_instance_url(svc, row)}/frames/{n}"
            yield OutPart(OCTET, _one(data), (("Content-Location", location),))

    media = related_content_type(boundary, OCTET, "1.2.840.10008.1.2.1")
    return StreamingResponse(write_parts(parts(), boundary), media_type=media)


def _bulk_value(path: Path, tag_path: tuple[int, ...]) -> bytes:
    ds = dcmread(path)
    for i in range(0, len(tag_path) - 1, 2):
        ds = ds[tag_path[i]].value[tag_path[i + 1]]
    value = ds[tag_path[-1]].value
    return value if isinstance(value, bytes) else str(value).encode()


async def bulkdata(
    svc: DicomwebServices, request: Request, auth: AuthContext, uids: Uids, tag_path: str
) -> Response:
    """Retrieve one bulk data value named by a metadata BulkDataURI (PS3.18 §10.4.1.1.5)."""
    check_octet_accept(request)
    try:
        path = parse_tag_path(tag_path)
    except ValueError as exc:
        raise NotFound(str(exc)) from exc
    (row,) = await instance_rows(svc, auth, uids[0], uids[1], uids[2])
    pixel = row.extra.get("pixel") or {}
    if path == (PIXEL_DATA,) and pixel.get("length") is not None:
        body = svc.blobs.open(row.blob.key, offset=pixel["offset"], length=pixel["length"])
    else:
        try:
            value = await asyncio.to_thread(_bulk_value, svc.blobs.path_for(row.blob.key), path)
        except (KeyError, IndexError, TypeError) as exc:
            raise NotFound(f"no bulk data at {tag_path}") from exc
        body = _one(value)
    boundary = new_boundary()
    parts = [OutPart(OCTET, body)]
    media = related_content_type(boundary, OCTET)
    return StreamingResponse(write_parts(parts, boundary), media_type=media)
