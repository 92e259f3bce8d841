"""WADO-RS over HTTP: instances, metadata, frames and bulk data (PS3.18 §10.4).

Instances are streamed from the blob store, in the transfer syntax
negotiated per instance (``transfer_syntax.negotiate``; Explicit VR Little
Endian by default, transcoded when stored otherwise and decodable; 406 when
an instance cannot be served as asked). A retrieval's multipart body goes
through ``FileBlobStore.gather``: part headers and files in blocks of a few
megabytes, read ahead in a worker thread, with a Content-Length when every
part is sent as stored (its size is in the index; chunked encoding would copy
every block once more). Reading each file only after the previous one was
sent, in messages of one instance or one part header each, made whole-study
retrieval about half as fast. Metadata comes from the index's precomputed
documents, never from the files, gzip-compressed when the client accepts it,
with an ETag honouring If-None-Match.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydicom import dcmread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.blobstore import Piece
from dicomweb.dicom_json import parse_tag_path
from dicomweb.http_common import DICOM_JSON, DicomwebServices, visible_study
from dicomweb.multipart import (
    OutPart,
    close_delimiter,
    new_boundary,
    part_head,
    related_content_type,
    write_parts,
)
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
from fhir_server.storage.dicom_port import InstanceFile, InstanceRow

OCTET = "application/octet-stream"
_OCTET_RANGES = (OCTET, "*/*", "application/*")
Uids = tuple[str, str | None, str | None]
Headers = tuple[tuple[str, str], ...]
PIXEL_DATA = 0x7FE00010
T = TypeVar("T")


async def instance_rows(
    svc: DicomwebServices, auth: AuthContext, study: str, series: str | None, sop: str | None
) -> list[InstanceRow]:
    """The instances in scope, after the access check; 404 when none."""
    await visible_study(svc, auth, study, Interaction.READ)
    return _found(await svc.index.instances(study, series, sop))


async def instance_files(
    svc: DicomwebServices, auth: AuthContext, study: str, series: str | None, sop: str | None
) -> list[InstanceFile]:
    """As ``instance_rows``, only the files (no attributes to decode: a whole study's
    took a millisecond and a half before its first byte could go out)."""
    await visible_study(svc, auth, study, Interaction.READ)
    return _found(await svc.index.instance_files(study, series, sop))


def _found(rows: list[T]) -> list[T]:
    if not rows:
        raise NotFound("no such series or instance")
    return rows


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


def _instance_headers(svc: DicomwebServices, row: InstanceFile, ts: str) -> tuple[str, Headers]:
    """An instance part's Content-Type and other headers (PS3.18 §8.7.3.3.2)."""
    return f"application/dicom; transfer-syntax={ts}", (
        ("Content-Location", _instance_url(svc, row)),
    )


def instance_part(svc: DicomwebServices, row: InstanceFile, ts: str) -> OutPart:
    content_type, headers = _instance_headers(svc, row, ts)
    if ts == row.transfer_syntax_uid:
        return OutPart(content_type, svc.blobs.open(row.blob.key), headers)
    return OutPart(content_type, _transcoded(svc.blobs.path_for(row.blob.key)), headers)


async def _transcoded(path: Path) -> AsyncIterator[bytes]:
    yield await asyncio.to_thread(transcode_to_explicit_le, path)


def _instance_url(svc: DicomwebServices, row: InstanceFile) -> str:
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
    rows = await instance_files(svc, auth, study, series, sop)
    accept = request.headers.get("accept")
    # once per stored transfer syntax, not per instance: parsing Accept is not free
    served = {ts: negotiate(accept, ts) for ts in {row.transfer_syntax_uid for row in rows}}
    chosen = [served[row.transfer_syntax_uid] for row in rows]
    boundary = new_boundary()
    pieces = retrieve_pieces(svc, rows, chosen, boundary)
    single = chosen[0] if len(set(chosen)) == 1 else None
    media = related_content_type(boundary, "application/dicom", single)
    length = body_length(pieces)
    # a known length spares the per-chunk framing (and its copy) of chunked encoding
    headers = {"Content-Length": str(length)} if length is not None else None
    return StreamingResponse(svc.blobs.gather(pieces), media_type=media, headers=headers)


def body_length(pieces: list[Piece]) -> int | None:
    """The body's length in bytes, when every piece's is known before it is made."""
    total = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            total += len(piece)
        elif callable(piece):
            return None
        else:
            total += piece.size
    return total


def retrieve_pieces(
    svc: DicomwebServices, rows: Sequence[InstanceFile], chosen: list[str], boundary: str
) -> list[Piece]:
    """The multipart body as the blob store's ``gather`` sends it: each part's
    delimiter and headers, then its blob as stored or its transcoding, run in
    the reading thread when its turn comes (PS3.18 §8.7.3.3.2)."""
    pieces: list[Piece] = []
    for n, (row, ts) in enumerate(zip(rows, chosen, strict=True)):
        content_type, headers = _instance_headers(svc, row, ts)
        pieces.append(part_head(boundary, content_type, headers, first=n == 0))
        if ts == row.transfer_syntax_uid:
            pieces.append(row.blob)
        else:
            pieces.append(partial(transcode_to_explicit_le, svc.blobs.path_for(row.blob.key)))
    pieces.append(close_delimiter(boundary, empty=not rows))
    return pieces


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
            location = f"{_instance_url(svc, row.file)}/frames/{n}"
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
