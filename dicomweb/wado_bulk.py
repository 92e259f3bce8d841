"""WADO-RS bulk data of whole studies, series and instances, and their pixel data
(PS3.18 §10.4.1.1.5, §10.4.1.1.6; payloads §10.4.3.3.5, §10.4.3.3.6).

A Study, Series or Instance Bulkdata resource (``.../bulkdata``; also the study,
series or instance itself asked for as ``multipart/related;
type="application/octet-stream"``, which Table 10.4.4-1 requires) is every value
the instances' metadata gives as a BulkDataURI, each in a part whose
Content-Location is that URI, so that a client can match parts to metadata. A
Pixel Data resource (``.../pixeldata``) is only each instance's top-level Pixel
Data. Values go as little endian octets, Pixel Data in the best form the Accept
header admits (``wado_pixels.pixel_parts``); both are multipart only, being
several values (a bare body is for one value, ``wado_pixels.bulkdata``).

The body is made instance by instance as it is sent: each instance's metadata is
read from the index, and where its values lie in its file, when its turn comes; each
value is then sent from the file a block at a time (``stored_values``), so memory
holds one instance's header and small values, not its large ones.
What can be known before the status goes out is checked first: the instances
being there and visible (404), and the Pixel Data of every stored transfer syntax
having an acceptable form (406). Pixel Data whose decoding fails later is sent as
stored, under its own Content-Type, as instance retrieval does with a part.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.decode_limit import DecodeTooLarge
from dicomweb.dicom_json import parse_tag_path
from dicomweb.http_common import Access, DicomwebServices
from dicomweb.multipart import OutPart, new_boundary, related_content_type, write_parts
from dicomweb.pixel_codec import TranscodeError
from dicomweb.stored_values import locate
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PIXEL_DATA,
    NotAcceptable,
    PixelForm,
    lookup,
    pixel_choices,
)
from dicomweb.wado import instance_rows
from dicomweb.wado_pixels import Uids, pixel_parts
from fhir_server.errors import NotFound
from fhir_server.storage.dicom_port import InstanceRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkValue:
    """One value an instance's metadata gives as a BulkDataURI (PS3.18 §F.2.6)."""

    uri: str
    path: tuple[int, ...]
    vr: str


def bulk_values(doc: dict[str, Any]) -> list[BulkValue]:
    """Every BulkDataURI in an instance's DICOM JSON, items' included, in tag order."""
    return list(_walk(doc))


def _walk(dataset: dict[str, Any]) -> Iterator[BulkValue]:
    for element in dataset.values():
        if not isinstance(element, dict):
            continue
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and "/bulkdata/" in uri:
            try:
                path = parse_tag_path(uri.rsplit("/bulkdata/", 1)[1])
            except ValueError:
                continue
            yield BulkValue(uri, path, str(element.get("vr") or "UN"))
        items = element.get("Value") if element.get("vr") == "SQ" else None
        for item in items or ():
            if isinstance(item, dict):
                yield from _walk(item)


def _multipart_forms(accept: str | None, stored_uid: str) -> tuple[PixelForm, ...]:
    """The forms a multipart range (or ``*/*``) admits, best first."""
    found = (c.form for c in pixel_choices(accept, stored_uid) if not c.single)
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class _Plan:
    """What one request sends: the Pixel Data forms per stored transfer syntax, and
    whether other values (octets) are acceptable."""

    forms: dict[str, tuple[PixelForm, ...]]
    octets: bool
    pixel_only: bool


def _has_pixels(row: InstanceRow) -> bool:
    return (row.extra.get("pixel") or {}).get("tag") == PIXEL_DATA


async def retrieve_bulkdata(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    uids: Uids,
    *,
    pixel_only: bool = False,
) -> Response:
    """A study's, series' or instance's bulk data, or only its Pixel Data (PS3.18
    §10.4.1.1.5-6), as multipart/related; 404 when there is none, 406 when none of
    it can be sent as the Accept header asks."""
    rows = await instance_rows(svc, access, uids[0], uids[1], uids[2])
    if pixel_only:
        rows = [r for r in rows if r.extra.get("pixel")]
        if not rows:
            raise NotFound("no pixel data in the instances asked for")
    accept = request.headers.get("accept")
    stored = {r.transfer_syntax_uid for r in rows if _has_pixels(r)}
    plan = _Plan(
        {ts: _multipart_forms(accept, ts) for ts in stored},
        any(f.native for f in _multipart_forms(accept, EXPLICIT_VR_LITTLE_ENDIAN)),
        pixel_only,
    )
    for ts, forms in plan.forms.items():
        if not forms:
            raise NotAcceptable(f"pixel data stored as {ts} cannot be sent as {accept!r}")
    if not plan.forms and not plan.octets:
        raise NotAcceptable(f"bulk data is sent as {OCTET_STREAM}, not {accept!r}")
    first = next((plan.forms[r.transfer_syntax_uid][0] for r in rows if _has_pixels(r)), None)
    boundary = new_boundary()
    media = related_content_type(boundary, first.media_type if first else OCTET_STREAM)
    body = write_parts(_parts(svc, rows, plan), boundary)
    return StreamingResponse(body, media_type=media)


async def _parts(
    svc: DicomwebServices, rows: Sequence[InstanceRow], plan: _Plan
) -> AsyncIterator[OutPart]:
    """Each instance's parts, made when its turn comes."""
    for row in rows:
        docs = await svc.index.metadata(row.study_uid, row.series_uid, row.uid)
        if not docs:  # deleted since the rows were read
            continue
        values = bulk_values(orjson.loads(docs[0]))
        pixel_tag = (row.extra.get("pixel") or {}).get("tag")
        if plan.pixel_only:
            values = [v for v in values if v.path == (pixel_tag,)]
        pixels = [v for v in values if v.path == (PIXEL_DATA,) and _has_pixels(row)]
        others = [v for v in values if v not in pixels] if plan.octets else []
        if others:
            file = svc.blobs.path_for(row.blob.key)
            wanted = [(v.path, v.vr) for v in others]
            found = await asyncio.to_thread(locate, file, wanted, row.transfer_syntax_uid)
            for value in others:
                stored = found.get(value.path)
                if stored is None:  # as ``wado_pixels.bulkdata`` answers it 404
                    log.warning("no raw value at %s", value.uri)
                    continue
                body = stored.chunks(svc.blobs, row.blob.key)
                yield OutPart(OCTET_STREAM, body, (("Content-Location", value.uri),))
        for value in pixels:
            for part in await _pixel_data(svc, row, plan.forms[row.transfer_syntax_uid], value):
                yield part


async def _pixel_data(
    svc: DicomwebServices, row: InstanceRow, forms: Sequence[PixelForm], value: BulkValue
) -> list[OutPart]:
    """The Pixel Data's parts in the first form that can be made; else as stored,
    under its own Content-Type (the status is sent); else none, logged."""
    stored = lookup(row.transfer_syntax_uid)
    fallback = (
        (PixelForm(stored.media, stored.uid),)
        if stored is not None and stored.encapsulated and stored.media
        else ()
    )
    for form in tuple(forms) + tuple(f for f in fallback if f not in forms):
        try:
            return await pixel_parts(svc, row, form, value.uri)
        except (TranscodeError, DecodeTooLarge) as exc:
            log.warning("pixel data of %s not sent as %s: %s", row.uid, form.media_type, exc)
    return []
