"""WADO-RS over HTTP: instances and metadata (PS3.18 §10.4); frames and bulk
data are in ``wado_pixels``.

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
single instance is made before the status goes out (406 when no acceptable
form can be made). In a many-instance body a part whose transcoding fails is
sent as stored, its own Content-Type saying so, rather than breaking the
connection off.

Metadata comes from the index's precomputed documents, never from the files,
as DICOM JSON or converted to Native DICOM Model XML as it is sent,
gzip-compressed when the client prefers it, with an ETag per representation
honouring If-None-Match.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import zlib
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.blob_gather import Piece
from dicomweb.decode_limit import DecodeTooLarge
from dicomweb.dicom_xml import DICOM_XML, xml_parts
from dicomweb.http_common import (
    DICOM_JSON,
    Access,
    DicomwebServices,
    dataset_media,
    gzip_preferred,
    none_match,
    visible_study,
)
from dicomweb.multipart import (
    close_delimiter,
    new_boundary,
    part_head,
    related_content_type,
)
from dicomweb.pixel_codec import TranscodeError, transcode_to_explicit_le
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NotAcceptable,
    acceptable_syntaxes,
    lookup,
    prefers_single_part,
)
from dicomweb.warning_headers import warning_header
from fhir_server.access.context import Interaction
from fhir_server.errors import NotAcceptable as FhirNotAcceptable
from fhir_server.errors import NotFound
from fhir_server.storage.dicom_port import InstanceFile, InstanceRow

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]
T = TypeVar("T")


async def instance_rows(
    svc: DicomwebServices, access: Access, study: str, series: str | None, sop: str | None
) -> list[InstanceRow]:
    """The instances in scope, after the access check; 404 when none."""
    await visible_study(svc, access, study, Interaction.READ)
    return _found(await svc.index.instances(study, series, sop))


async def instance_files(
    svc: DicomwebServices, access: Access, study: str, series: str | None, sop: str | None
) -> list[InstanceFile]:
    """As ``instance_rows``, only the files (no attributes to decode: a whole study's
    took a millisecond and a half before its first byte could go out)."""
    await visible_study(svc, access, study, Interaction.READ)
    return _found(await svc.index.instance_files(study, series, sop))


def _found(rows: list[T]) -> list[T]:
    if not rows:
        raise NotFound("no such series or instance")
    return rows


def _instance_headers(svc: DicomwebServices, row: InstanceFile, ts: str) -> tuple[str, Headers]:
    """An instance part's Content-Type and other headers (PS3.18 §8.7.3.3.2)."""
    return f"application/dicom; transfer-syntax={ts}", (
        ("Content-Location", instance_url(svc, row)),
    )


def instance_url(svc: DicomwebServices, row: InstanceFile) -> str:
    return f"{svc.base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.uid}"


async def retrieve(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    """Retrieve a study, series or instance as multipart/related (PS3.18 §10.4.1.1)."""
    rows = await instance_files(svc, access, study, series, sop)
    accept = request.headers.get("accept")
    # once per stored transfer syntax, not per instance: parsing Accept is not free
    served = {
        ts: acceptable_syntaxes(accept, ts, multi=sop is None)
        for ts in {row.transfer_syntax_uid for row in rows}
    }
    for ts, options in served.items():
        if not options:
            raise NotAcceptable(f"cannot serve transfer syntax {ts} for Accept: {accept}")
    if sop is not None and prefers_single_part(accept):
        return await _bare_instance(svc, rows[0], served[rows[0].transfer_syntax_uid])
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


async def _bare_instance(
    svc: DicomwebServices, row: InstanceFile, options: tuple[str, ...]
) -> Response:
    """One instance as a single-part ``application/dicom`` body, for a client that
    accepts nothing else; made before the status goes out, as ``_single_pieces``."""
    body = await stored_or_transcoded(svc, row, options)
    ts = options[0] if isinstance(body, bytes) else row.transfer_syntax_uid
    content_type, headers = _instance_headers(svc, row, ts)
    if isinstance(body, bytes):
        return Response(body, media_type=content_type, headers=dict(headers))
    length = (("Content-Length", str(row.blob.size)),)
    return StreamingResponse(
        svc.blobs.open(row.blob.key), media_type=content_type, headers=dict(headers + length)
    )


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
    path, limit = svc.blobs.path_for(row.blob.key), svc.max_decoded_bytes
    try:
        return await asyncio.to_thread(transcode_to_explicit_le, path, limit=limit)
    except (TranscodeError, DecodeTooLarge) as exc:
        if row.transfer_syntax_uid in options:
            return row.blob
        if isinstance(exc, DecodeTooLarge):
            raise too_large_to_decode(row.uid, exc) from exc
        raise NotAcceptable(f"instance {row.uid} cannot be transcoded: {exc}") from exc


def too_large_to_decode(uid: str, exc: DecodeTooLarge) -> FhirNotAcceptable:
    """406 for data that would decode to more than the limit: the client can still
    have it as stored (``transfer-syntax=*``, PS3.18 §8.7.3.5); the Warning says so."""
    text = f"instance {uid}: {exc}; ask for transfer-syntax=* to receive it as stored"
    return FhirNotAcceptable(text, headers={"Warning": warning_header(text)})


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
        limit = svc.max_decoded_bytes
        body, ts = transcode_to_explicit_le(path, limit=limit), EXPLICIT_VR_LITTLE_ENDIAN
    except (TranscodeError, DecodeTooLarge) as exc:
        log.warning("sending instance %s as stored: %s", row.uid, exc)
        body, ts = path.read_bytes(), row.transfer_syntax_uid
    content_type, headers = _instance_headers(svc, row, ts)
    return part_head(boundary, content_type, headers, first=first) + body


def _etag(body: bytes, suffix: str = "") -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}{suffix}"'


async def metadata(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    """Retrieve metadata from the precomputed documents (PS3.18 §10.4.1.1.2), as DICOM
    JSON or, when preferred, Native DICOM Model XML (``_xml_metadata``).

    The gzip representation has its own ETag (RFC 9110 §8.8.3)."""
    media = dataset_media(request, "metadata")
    await visible_study(svc, access, study, Interaction.READ)
    docs = await svc.index.metadata(study, series, sop)
    if not docs:
        raise NotFound("no such series or instance")
    body = b"[" + b",".join(docs) + b"]"
    compress = gzip_preferred(request.headers.get("accept-encoding"))
    suffix = ("-xml" if media == "xml" else "") + ("-gz" if compress else "")
    etag = _etag(body, suffix)
    vary = "Accept, Accept-Encoding"
    headers = {"ETag": etag, "Vary": vary, "Cache-Control": "private, no-cache"}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if compress:
        headers["Content-Encoding"] = "gzip"
    if media == "xml":
        return _xml_metadata(docs, compress, headers, etag)
    if compress:
        body = await asyncio.to_thread(gzip.compress, body, 5)
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _xml_metadata(
    docs: list[bytes], compress: bool, headers: dict[str, str], etag: str
) -> Response:
    """The metadata as ``multipart/related; type="application/dicom+xml"``, one part per
    instance (PS3.18 §10.4.3.3.2), converted from the JSON documents as the body is
    sent: a synchronous iterator, which Starlette runs in a worker thread, so that a
    large study's conversion does not hold up the event loop. Its ETag is the JSON's
    content with its own suffix: the XML is a function of the JSON, and so is its
    boundary (from the ETag, not random), or one strong ETag would name two bodies."""
    boundary = hashlib.sha256(etag.encode()).hexdigest()[:32]
    parts = xml_parts(map(orjson.loads, docs), boundary)
    body = _gzip_stream(parts) if compress else parts
    media = related_content_type(boundary, DICOM_XML)
    return StreamingResponse(body, media_type=media, headers=headers)


def _gzip_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` as one gzip member, compressed as they come."""
    packer = zlib.compressobj(5, zlib.DEFLATED, 31)  # 31: the gzip wrapper (RFC 1952)
    for chunk in chunks:
        if packed := packer.compress(chunk):
            yield packed
    yield packer.flush()


def frame_count_of(row: InstanceRow) -> int:
    """How many frames an instance has, as the index records it (1 when it says none)."""
    return max(int(row.extra.get("frames") or 1), 1)
