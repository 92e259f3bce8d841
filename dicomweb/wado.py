"""WADO-RS over HTTP: instances, metadata, frames and bulk data (PS3.18 §10.4).

Instances are streamed from the blob store, in the transfer syntax
negotiated per instance (``transfer_syntax.negotiate``; Explicit VR Little
Endian by default, transcoded when stored otherwise and decodable; lossy
data as stored when it cannot be decoded; 406 when an instance cannot be
served as asked). A retrieval's multipart body goes through
``FileBlobStore.gather``: part headers and files in blocks of a few
megabytes, read ahead in a worker thread, with a Content-Length when every
part is sent as stored (its size is in the index; chunked encoding would copy
every block once more). Reading each file only after the previous one was
sent, in messages of one instance or one part header each, made whole-study
retrieval about half as fast.

A decoder can fail on a file it claims to handle, so nothing that may fail
to decode is decoded after the response has started if it can be helped: a
single instance, frames and bulk data are made before the status goes out
(406 when no acceptable form can be made). In a many-instance body a part
whose transcoding fails is sent as stored, its own Content-Type saying so,
rather than breaking the connection off.

Metadata comes from the index's precomputed documents, never from the files,
gzip-compressed when the client prefers it, with an ETag per representation
honouring If-None-Match.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydicom import dcmread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.blobstore import Piece
from dicomweb.dicom_json import format_tag_path, parse_tag_path
from dicomweb.http_common import (
    DICOM_JSON,
    DicomwebServices,
    gzip_preferred,
    none_match,
    visible_study,
)
from dicomweb.multipart import (
    OutPart,
    close_delimiter,
    new_boundary,
    part_head,
    related_content_type,
    write_parts,
)
from dicomweb.qido_rs import check_json_accept
from dicomweb.render import RenderError, native_frame_range
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NUMBER_WIDTHS,
    OCTET_STREAM,
    PIXEL_DATA,
    NotAcceptable,
    PixelForm,
    TranscodeError,
    acceptable_syntaxes,
    compressed_frames,
    lookup,
    native_frames,
    native_pixel_data,
    pixel_forms,
    pixel_width,
    swap_bytes,
    transcode_to_explicit_le,
)
from fhir_server.access.context import AuthContext, Interaction
from fhir_server.errors import InvalidRequest, NotFound
from fhir_server.storage.dicom_port import InstanceFile, InstanceRow

log = logging.getLogger(__name__)

OCTET = OCTET_STREAM
Uids = tuple[str, str | None, str | None]
Headers = tuple[tuple[str, str], ...]
T = TypeVar("T")
# Pixel data whose frames lie in the file as they are sent (bar the byte order)
_SLICEABLE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})


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
    served = {
        ts: acceptable_syntaxes(accept, ts, multi=sop is None)
        for ts in {row.transfer_syntax_uid for row in rows}
    }
    for ts, options in served.items():
        if not options:
            raise NotAcceptable(f"cannot serve transfer syntax {ts} for Accept: {accept}")
    boundary = new_boundary()
    single: str | None
    if len(rows) == 1:
        pieces, single = await _single_pieces(svc, rows[0], served, boundary)
    else:
        chosen = [served[row.transfer_syntax_uid][0] for row in rows]
        pieces, single = retrieve_pieces(svc, rows, chosen, boundary), _one_syntax(rows, chosen)
    media = related_content_type(boundary, "application/dicom", single)
    length = body_length(pieces)
    # a known length spares the per-chunk framing (and its copy) of chunked encoding
    headers = {"Content-Length": str(length)} if length is not None else None
    return StreamingResponse(svc.blobs.gather(pieces), media_type=media, headers=headers)


async def _single_pieces(
    svc: DicomwebServices, row: InstanceFile, served: dict[str, tuple[str, ...]], boundary: str
) -> tuple[list[Piece], str]:
    """One instance, transcoded before the response starts, so that a failure can
    still be a 406, or the file as stored when that is acceptable too."""
    options = served[row.transfer_syntax_uid]
    body = await stored_or_transcoded(svc, row, options)
    ts = options[0] if isinstance(body, bytes) else row.transfer_syntax_uid
    content_type, headers = _instance_headers(svc, row, ts)
    head = part_head(boundary, content_type, headers, first=True)
    return [head, body, close_delimiter(boundary)], ts


async def stored_or_transcoded(
    svc: DicomwebServices, row: InstanceFile, options: tuple[str, ...]
) -> Piece:
    if options[0] == row.transfer_syntax_uid:
        return row.blob
    try:
        return await asyncio.to_thread(transcode_to_explicit_le, svc.blobs.path_for(row.blob.key))
    except TranscodeError as exc:
        if row.transfer_syntax_uid in options:
            return row.blob
        raise NotAcceptable(f"instance {row.uid} cannot be transcoded: {exc}") from exc


def _one_syntax(rows: Sequence[InstanceFile], chosen: list[str]) -> str | None:
    """The transfer syntax of every part, for the response's Content-Type, when it is
    certain: one chosen for all, and no part that may fall back to its stored form."""
    if len(set(chosen)) != 1:
        return None
    for row, ts in zip(rows, chosen, strict=True):
        stored = lookup(row.transfer_syntax_uid)
        if ts != row.transfer_syntax_uid and (stored is None or stored.encapsulated):
            return None
    return chosen[0]


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
    delimiter and headers, then its blob as stored; or its transcoding with its
    headers, run in the reading thread when its turn comes (PS3.18 §8.7.3.3.2)."""
    pieces: list[Piece] = []
    for n, (row, ts) in enumerate(zip(rows, chosen, strict=True)):
        if ts == row.transfer_syntax_uid:
            content_type, headers = _instance_headers(svc, row, ts)
            pieces.append(part_head(boundary, content_type, headers, first=n == 0))
            pieces.append(row.blob)
        else:
            path = svc.blobs.path_for(row.blob.key)
            pieces.append(partial(_transcoded_part, svc, row, path, boundary, n == 0))
    pieces.append(close_delimiter(boundary, empty=not rows))
    return pieces


def _transcoded_part(
    svc: DicomwebServices, row: InstanceFile, path: Path, boundary: str, first: bool
) -> bytes:
    """A part transcoded to Explicit VR Little Endian, or, when its pixel data will not
    decode, as stored under its real transfer syntax: the status is already sent."""
    try:
        body, ts = transcode_to_explicit_le(path), EXPLICIT_VR_LITTLE_ENDIAN
    except TranscodeError as exc:
        log.warning("sending instance %s as stored: %s", row.uid, exc)
        body, ts = path.read_bytes(), row.transfer_syntax_uid
    content_type, headers = _instance_headers(svc, row, ts)
    return part_head(boundary, content_type, headers, first=first) + body


def _etag(body: bytes, suffix: str = "") -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}{suffix}"'


async def metadata(
    svc: DicomwebServices,
    request: Request,
    auth: AuthContext,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    """Retrieve metadata from the precomputed documents (PS3.18 §10.4.1.1.2).

    The gzip representation has its own ETag (RFC 9110 §8.8.3)."""
    check_json_accept(request)
    await visible_study(svc, auth, study, Interaction.READ)
    docs = await svc.index.metadata(study, series, sop)
    if not docs:
        raise NotFound("no such series or instance")
    body = b"[" + b",".join(docs) + b"]"
    compress = gzip_preferred(request.headers.get("accept-encoding"))
    etag = _etag(body, "-gz" if compress else "")
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "private, no-cache"}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if compress:
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


def _forms(accept: str | None, row: InstanceRow, *, by_frame: bool) -> tuple[PixelForm, ...]:
    """The acceptable forms of the pixel data; a video's stream has no frames of its own
    to send one by one, so its frames are only ever sent decoded."""
    forms = pixel_forms(accept, row.transfer_syntax_uid)
    stored = lookup(row.transfer_syntax_uid)
    if by_frame and stored is not None and stored.video:
        forms = tuple(f for f in forms if f.native)
    if not forms:
        raise NotAcceptable(
            f"the pixel data of {row.uid} ({row.transfer_syntax_uid}) cannot be sent as {accept!r}"
        )
    return forms


async def _first_made(
    row: InstanceRow, forms: Sequence[PixelForm], make: Callable[[PixelForm], Awaitable[T]]
) -> tuple[PixelForm, T]:
    """The first form ``make`` manages to produce (decoding can fail); else 406."""
    problem = None
    for form in forms:
        try:
            return form, await make(form)
        except TranscodeError as exc:
            problem = exc
    raise NotAcceptable(f"the pixel data of {row.uid} cannot be decoded: {problem}")


async def _frame_data(
    svc: DicomwebServices, row: InstanceRow, numbers: list[int], form: PixelForm
) -> list[bytes]:
    """The frames in ``form``: read from the file where they lie as sent (swapped if big
    endian), else decoded, or cut out of the encapsulated value."""
    path = svc.blobs.path_for(row.blob.key)
    indices = [n - 1 for n in numbers]
    if not form.native:
        return await asyncio.to_thread(compressed_frames, path, indices)
    spans = _native_spans(row, numbers)
    if spans is None:
        return await asyncio.to_thread(native_frames, path, indices)
    frames = []
    for offset, length in spans:
        data = b"".join(
            [c async for c in svc.blobs.open(row.blob.key, offset=offset, length=length)]
        )
        frames.append(data)
    if row.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        pixel = row.extra.get("pixel") or {}
        width = pixel_width(int(row.extra.get("bits") or 8), pixel.get("vr"))
        frames = [swap_bytes(f, width) for f in frames]
    return frames


def _native_spans(row: InstanceRow, numbers: list[int]) -> list[tuple[int, int]] | None:
    ts, pixel = row.transfer_syntax_uid, row.extra.get("pixel") or {}
    if ts not in _SLICEABLE | {EXPLICIT_VR_BIG_ENDIAN} or pixel.get("tag") != PIXEL_DATA:
        return None
    spans = []
    for n in numbers:
        try:
            # big endian frames lie where little endian ones would (PS3.5 §8.1.1)
            span = native_frame_range(row.extra, EXPLICIT_VR_LITTLE_ENDIAN, n)
        except RenderError as exc:
            raise NotFound(str(exc)) from exc
        if span is None:
            return None
        spans.append(span)
    return spans


async def frames(
    svc: DicomwebServices, request: Request, auth: AuthContext, uids: Uids, frame_list: str
) -> Response:
    """Retrieve frames as multipart/related (PS3.18 §10.4.1.1.3): uncompressed, or
    compressed as stored when asked for or when they cannot be decoded
    (PS3.18 §8.7.3.3). Every frame is made before the response starts."""
    numbers = _frame_numbers(frame_list)
    (row,) = await instance_rows(svc, auth, uids[0], uids[1], uids[2])
    for n in numbers:
        if n > int(row.extra.get("frames") or 0):
            raise NotFound(f"instance {row.uid} has no frame {n}")
    forms = _forms(request.headers.get("accept"), row, by_frame=True)
    form, data = await _first_made(row, forms, lambda f: _frame_data(svc, row, numbers, f))
    location = f"{_instance_url(svc, row.file)}/frames"
    parts = [
        OutPart(form.content_type, _one(d), (("Content-Location", f"{location}/{n}"),))
        for n, d in zip(numbers, data, strict=True)
    ]
    boundary = new_boundary()
    media = related_content_type(boundary, form.media_type, form.transfer_syntax)
    return StreamingResponse(write_parts(parts, boundary), media_type=media)


def _bulk_element(doc: dict[str, Any], path: tuple[int, ...]) -> dict[str, Any] | None:
    """The element at ``path`` in an instance's DICOM JSON, or None."""
    node: Any = doc
    try:
        for i in range(0, len(path) - 1, 2):
            node = node[f"{path[i]:08X}"]["Value"][path[i + 1]]
        element = node[f"{path[-1]:08X}"]
    except (KeyError, IndexError, TypeError):
        return None
    return element if isinstance(element, dict) else None


async def _bulk_vr(svc: DicomwebServices, row: InstanceRow, path: tuple[int, ...]) -> str:
    """The VR of a value the metadata gives as a BulkDataURI; 404 for any other
    (a short value is inline in the metadata, not a resource of its own)."""
    docs = await svc.index.metadata(row.study_uid, row.series_uid, row.uid)
    element = _bulk_element(orjson.loads(docs[0]), path) if docs else None
    if element is None or "BulkDataURI" not in element:
        raise NotFound(f"instance {row.uid} has no bulk data at {format_tag_path(path)}")
    return str(element.get("vr") or "UN")


def _bulk_value(file: Path, tag_path: tuple[int, ...], vr: str, big_endian: bool) -> bytes:
    """A value's bytes as stored, in little endian order (PS3.18 §8.7.3.3.1)."""
    ds = dcmread(file)
    for i in range(0, len(tag_path) - 1, 2):
        ds = ds[tag_path[i]].value[tag_path[i + 1]]
    value = ds.get_item(tag_path[-1]).value  # raw, when pydicom has not converted it
    if not isinstance(value, bytes):
        raise KeyError(f"{tag_path[-1]:08X} holds no raw value")
    return swap_bytes(value, NUMBER_WIDTHS.get(vr, 1)) if big_endian else value


async def _pixel_parts(svc: DicomwebServices, row: InstanceRow, form: PixelForm) -> list[OutPart]:
    """Pixel Data as bulk data: one part of every frame uncompressed, or compressed
    frames one per part (PS3.18 §8.7.3.3.2; a video is one stream)."""
    pixel, path = row.extra.get("pixel") or {}, svc.blobs.path_for(row.blob.key)
    if not form.native:
        stored = lookup(row.transfer_syntax_uid)
        count = 1 if stored and stored.video else max(int(row.extra.get("frames") or 1), 1)
        data = await asyncio.to_thread(compressed_frames, path, range(count))
        return [OutPart(form.content_type, _one(d)) for d in data]
    native = row.transfer_syntax_uid in _SLICEABLE and pixel.get("tag") == PIXEL_DATA
    if native and pixel.get("length") is not None:
        body = svc.blobs.open(row.blob.key, offset=pixel["offset"], length=pixel["length"])
        return [OutPart(form.content_type, body)]
    return [OutPart(form.content_type, _one(await asyncio.to_thread(native_pixel_data, path)))]


async def bulkdata(
    svc: DicomwebServices, request: Request, auth: AuthContext, uids: Uids, tag_path: str
) -> Response:
    """Retrieve one bulk data value named by a metadata BulkDataURI (PS3.18 §10.4.1.1.5):
    little endian octets, or compressed pixel data under its own media type."""
    try:
        path = parse_tag_path(tag_path)
    except ValueError as exc:
        raise NotFound(str(exc)) from exc
    (row,) = await instance_rows(svc, auth, uids[0], uids[1], uids[2])
    vr = await _bulk_vr(svc, row, path)
    accept = request.headers.get("accept")
    boundary = new_boundary()
    if path == (PIXEL_DATA,):
        forms = _forms(accept, row, by_frame=False)
        form, parts = await _first_made(row, forms, lambda f: _pixel_parts(svc, row, f))
        media = related_content_type(boundary, form.media_type, form.transfer_syntax)
        return StreamingResponse(write_parts(parts, boundary), media_type=media)
    if not any(f.native for f in pixel_forms(accept, EXPLICIT_VR_LITTLE_ENDIAN)):
        raise NotAcceptable(f"bulk data is sent as {OCTET}, not {accept!r}")
    big = row.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
    file = svc.blobs.path_for(row.blob.key)
    try:
        value = await asyncio.to_thread(_bulk_value, file, path, vr, big)
    except (KeyError, IndexError, TypeError) as exc:
        raise NotFound(f"no bulk data at {tag_path}") from exc
    parts = [OutPart(OCTET, _one(value))]
    return StreamingResponse(
        write_parts(parts, boundary), media_type=related_content_type(boundary, OCTET)
    )
