"""WADO-RS frames and bulk data (PS3.18 §10.4.1.1.3, §10.4.1.1.5).

Frames are sent uncompressed as little endian octets (PS3.18 §8.7.3.3.1), or
compressed as stored under their own media type (PS3.18 §8.7.3.3.2) when the
Accept header asks for that or when they cannot be decoded; a video's stream
has no frames of its own, so its frames are only ever sent decoded. Frames
that lie in the file as they are sent (native little endian; big endian but
for the byte order) are read at the offsets the index recorded, without
parsing the file. Bulk data is one value a metadata BulkDataURI names: Pixel
Data in one of the forms above (every frame in one part, or one part per
compressed frame), any other value as little endian octets.

Everything that can fail is decided before the response starts: the frame
list (400), the frames and the value being there (404), the form (406), and
the frames or the value themselves, decoded or cut out, each acceptable form
tried in turn, because a decoder can fail on a file it claims to handle and,
once the status has gone out, a failure can only break the connection off.
Only pixel data lying in the file as sent is streamed from the blob after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.decode_limit import DecodeTooLarge
from dicomweb.dicom_json import format_tag_path, parse_tag_path
from dicomweb.http_common import Access, DicomwebServices
from dicomweb.multipart import (
    OutPart,
    new_boundary,
    related_content_type,
    single_chunk,
    write_parts,
)
from dicomweb.pixel_codec import (
    TranscodeError,
    compressed_frames,
    native_frames,
    native_pixel_data,
    pixel_width,
    swap_bytes,
)
from dicomweb.render import RenderError, native_frame_range
from dicomweb.stored_values import StoredValue, locate
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PIXEL_DATA,
    NotAcceptable,
    PixelChoice,
    PixelForm,
    lookup,
    pixel_choices,
)
from dicomweb.wado import frame_count_of, instance_rows, instance_url, too_large_to_decode
from fhir_server.errors import InvalidRequest, NotFound
from fhir_server.storage.dicom_port import InstanceRow
from fhir_server.url_integers import url_integer

OCTET = OCTET_STREAM
Uids = tuple[str, str | None, str | None]
T = TypeVar("T")
# Pixel data whose frames lie in the file as they are sent (bar the byte order)
_SLICEABLE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
# native Pixel Data read from the file as it lies (big endian swapped as it goes)
_NATIVE = _SLICEABLE | {EXPLICIT_VR_BIG_ENDIAN}


async def _frame_later(path: Path, index: int) -> AsyncIterator[bytes]:
    """Encapsulated frame ``index``, read from the file once the body gets to it."""
    (frame,) = await asyncio.to_thread(compressed_frames, path, [index])
    yield frame


def frame_number(text: str, name: str = "a frame number") -> int:
    """A frame number: ASCII digits, from 1 (frames count from 1); 400 otherwise."""
    number = url_integer(text)
    if number is None or number < 1:
        raise InvalidRequest(f"{name} must be an integer from 1, not {text!r}")
    return number


def _frame_numbers(text: str) -> list[int]:
    """The frame list: one or more non-duplicate frame numbers (PS3.18 §10.4.1.1.3);
    a repeat would make the response hold that frame again."""
    numbers: dict[int, None] = {}  # an ordered set
    for item in filter(None, (n.strip() for n in text.split(","))):
        number = frame_number(item)
        if number in numbers:
            raise InvalidRequest(f"the frame list names frame {number} more than once")
        numbers[number] = None
    if not numbers:
        raise InvalidRequest(f"invalid frame list {text!r}")
    return list(numbers)


def _choices(
    accept: str | None, row: InstanceRow, *, by_frame: bool, items: int
) -> tuple[PixelChoice, ...]:
    """The acceptable forms of the pixel data, best first; a video's stream has no
    frames of its own to send one by one, so its frames are only ever sent decoded.
    A single-part range admits a form only when it makes one item (PS3.18 Table
    10.4.4-1, note 3: one frame, one bulk data value); several need a multipart one."""
    stored = lookup(row.transfer_syntax_uid)
    video = stored is not None and stored.video
    choices = tuple(
        c
        for c in pixel_choices(accept, row.transfer_syntax_uid)
        if not (by_frame and video and not c.form.native)
        and not (c.single and _item_count(row, c.form, items) > 1)
    )
    if not choices:
        raise NotAcceptable(
            f"the pixel data of {row.uid} ({row.transfer_syntax_uid}) cannot be sent as {accept!r}"
        )
    return choices


def _item_count(row: InstanceRow, form: PixelForm, items: int) -> int:
    """How many parts the pixel data makes in ``form``: ``items`` frames asked for
    (0: the whole value, one part uncompressed or for a video, else one per frame)."""
    if items or form.native:
        return items or 1
    stored = lookup(row.transfer_syntax_uid)
    return 1 if stored is not None and stored.video else frame_count_of(row)


async def _first_made(
    row: InstanceRow, choices: Sequence[PixelChoice], make: Callable[[PixelForm], Awaitable[T]]
) -> tuple[PixelChoice, T]:
    """The first form ``make`` manages to produce (decoding can fail, or be refused
    as too large); else 406."""
    problem: Exception | None = None
    for choice in choices:
        try:
            return choice, await make(choice.form)
        except (TranscodeError, DecodeTooLarge) as exc:
            problem = exc
    if isinstance(problem, DecodeTooLarge):
        raise too_large_to_decode(row.uid, problem) from problem
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
        limit = svc.max_decoded_bytes
        return await asyncio.to_thread(native_frames, path, indices, limit=limit)
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
    if ts not in _NATIVE or pixel.get("tag") != PIXEL_DATA:
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
    svc: DicomwebServices, request: Request, access: Access, uids: Uids, frame_list: str
) -> Response:
    """Retrieve frames as multipart/related (PS3.18 §10.4.1.1.3): uncompressed, or
    compressed as stored when asked for or when they cannot be decoded
    (PS3.18 §8.7.3.3). Every frame is made before the response starts."""
    numbers = _frame_numbers(frame_list)
    (row,) = await instance_rows(svc, access, uids[0], uids[1], uids[2])
    for n in numbers:
        if n > int(row.extra.get("frames") or 0):
            raise NotFound(f"instance {row.uid} has no frame {n}")
    accept = request.headers.get("accept")
    choices = _choices(accept, row, by_frame=True, items=len(numbers))
    choice, data = await _first_made(row, choices, lambda f: _frame_data(svc, row, numbers, f))
    form, location = choice.form, f"{instance_url(svc, row.file)}/frames"
    if choice.single:  # one frame, asked for as a bare body
        headers = {"Content-Location": f"{location}/{numbers[0]}"}
        return Response(data[0], media_type=form.content_type, headers=headers)
    parts = [
        OutPart(form.content_type, single_chunk(d), (("Content-Location", f"{location}/{n}"),))
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


async def pixel_parts(
    svc: DicomwebServices, row: InstanceRow, form: PixelForm, location: str
) -> list[OutPart]:
    """Pixel Data as bulk data: one part of every frame uncompressed, or compressed
    frames one per part (PS3.18 §8.7.3.3.2; a video is one stream). A part of the
    whole value has ``location`` (its BulkDataURI) as its Content-Location, a frame
    its frame's URI."""
    pixel, path = row.extra.get("pixel") or {}, svc.blobs.path_for(row.blob.key)
    whole = (("Content-Location", location),)
    if not form.native:
        # the first frame now (a form that cannot be made fails before the status is
        # sent), each other one when its part's turn comes: never all of them at once
        count = _item_count(row, form, 0)
        (first,) = await asyncio.to_thread(compressed_frames, path, [0])
        if count == 1:
            return [OutPart(form.content_type, single_chunk(first), whole)]
        frames = f"{instance_url(svc, row.file)}/frames"
        bodies = [single_chunk(first), *(_frame_later(path, i) for i in range(1, count))]
        return [
            OutPart(form.content_type, body, (("Content-Location", f"{frames}/{n}"),))
            for n, body in enumerate(bodies, 1)
        ]
    ts = row.transfer_syntax_uid
    native = ts in _NATIVE and pixel.get("tag") == PIXEL_DATA
    if native and pixel.get("length") is not None:
        # sent from the file, big endian swapped a block at a time (PS3.5 §8.1.1)
        big = ts == EXPLICIT_VR_BIG_ENDIAN
        width = pixel_width(int(row.extra.get("bits") or 8), pixel.get("vr")) if big else 1
        value = StoredValue(pixel["offset"], pixel["length"], None, width)
        return [OutPart(form.content_type, value.chunks(svc.blobs, row.blob.key), whole)]
    decoded = await asyncio.to_thread(native_pixel_data, path, limit=svc.max_decoded_bytes)
    return [OutPart(form.content_type, single_chunk(decoded), whole)]


async def bulkdata(
    svc: DicomwebServices, request: Request, access: Access, uids: Uids, tag_path: str
) -> Response:
    """Retrieve one bulk data value named by a metadata BulkDataURI (PS3.18 §10.4.1.1.5):
    little endian octets, or compressed pixel data under its own media type; a bare
    body when the client accepts only that and it is one part (Table 10.4.4-1)."""
    try:
        path = parse_tag_path(tag_path)
    except ValueError as exc:
        raise NotFound(str(exc)) from exc
    (row,) = await instance_rows(svc, access, uids[0], uids[1], uids[2])
    accept = request.headers.get("accept")
    location = f"{instance_url(svc, row.file)}/bulkdata/{format_tag_path(path)}"
    if path == (PIXEL_DATA,):
        if not row.extra.get("pixel"):  # else the index says where it is: no metadata to read
            await _bulk_vr(svc, row, path)
        choices = _choices(accept, row, by_frame=False, items=0)
        choice, parts = await _first_made(
            row, choices, lambda f: pixel_parts(svc, row, f, location)
        )
        if choice.single:
            (part,) = parts
            return StreamingResponse(part.body, media_type=part.content_type)
        return _multipart(parts, choice.form)
    vr = await _bulk_vr(svc, row, path)
    octets = [c for c in pixel_choices(accept, EXPLICIT_VR_LITTLE_ENDIAN) if c.form.native]
    if not octets:
        raise NotAcceptable(f"bulk data is sent as {OCTET}, not {accept!r}")
    file = svc.blobs.path_for(row.blob.key)
    wanted = [(path, vr)]
    found = await asyncio.to_thread(locate, file, wanted, row.transfer_syntax_uid)
    if path not in found:
        raise NotFound(f"no bulk data at {tag_path}")
    value, key = found[path], row.blob.key
    if octets[0].single:
        length = {"Content-Length": str(value.length)}
        return StreamingResponse(value.chunks(svc.blobs, key), media_type=OCTET, headers=length)
    part = OutPart(OCTET, value.chunks(svc.blobs, key), (("Content-Location", location),))
    return _multipart([part], None)


def _multipart(parts: list[OutPart], form: PixelForm | None) -> StreamingResponse:
    boundary = new_boundary()
    media = related_content_type(
        boundary, form.media_type if form else OCTET, form.transfer_syntax if form else None
    )
    return StreamingResponse(write_parts(parts, boundary), media_type=media)
