"""Rendered and thumbnail resources, and WADO-URI (PS3.18 §8.3.5, §10.4.1.1.3-4, §9).

``/rendered`` and ``/thumbnail`` answer ``image/jpeg`` (the default),
``image/png`` or ``image/gif``, chosen from the ``accept`` query parameter
when given, else the Accept header (PS3.18 §8.3.3.1); anything else is a 406.
A rendered study or series is every image in it, one part each of a
``multipart/related`` body (``rendered_media``); a multi-frame instance is one
part per frame. The parts are made one at a time as the body is sent: the first
before the status goes out (so that a request that cannot be answered at all
gets its status), the others as their turn comes; one that then fails breaks the
response off (``ResponseBrokenOff``: the client sees no close delimiter). An
instance or frame asked for as a single-part image is one image (a multi-frame
instance's first frame, with a Warning saying so). A thumbnail is one
representative image (the middle instance, its middle frame). The query
parameters are read in ``rendered_params``. WADO-URI (``/wado?requestType=WADO``)
serves one instance as ``application/dicom`` or rendered, for older viewers; it
does not de-identify (``anonymize`` is refused). A frame that would decode to
more than the server's limit (``decode_limit``) is not rendered: 413, PS3.18's
answer when what would be sent exceeds what the origin server supports (PS3.2
Table N.7-92 lists it for Retrieve), the reason in a Warning header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.accept_param import requested_accept
from dicomweb.decode_limit import DecodeTooLarge, check_decode
from dicomweb.http_common import Access, DicomwebServices
from dicomweb.multipart import (
    OutPart,
    new_boundary,
    related_content_type,
    single_chunk,
    write_parts,
)
from dicomweb.render import MEDIA, RegionError, RenderError, RenderOptions, render
from dicomweb.rendered_media import RenderedMedia, choose_media, choose_rendered
from dicomweb.rendered_params import (
    annotation_warning,
    check_uri_dicom,
    check_uri_presentation,
    check_uri_request,
    render_options,
    rendered_warnings,
    uri_frame,
    uri_render_options,
)
from dicomweb.transfer_syntax import NotAcceptable, acceptable_syntaxes, can_decode
from dicomweb.wado import frame_count_of, instance_rows, instance_url, stored_or_transcoded
from dicomweb.warning_headers import bounded, warning_header
from fhir_server.errors import (
    FhirError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ResponseBrokenOff,
)
from fhir_server.storage.dicom_port import InstanceRow

DICOM = "application/dicom"
# WADO-URI contentType values served (PS3.18 §9.1.2.1.3, Table 8.7.4-1)
URI_MEDIA = (*MEDIA, DICOM)


async def _render(
    svc: DicomwebServices, row: InstanceRow, frame: int, opts: RenderOptions
) -> bytes:
    # A frame the instance does not have is an error in the request (PS3.18 §8.3.5.2);
    # an instance without pixel data gets as far as the decoder, which says so.
    count = frame_count_of(row)
    if not 1 <= frame <= count:
        raise InvalidRequest(f"instance {row.uid} has frames 1 to {count}, not {frame}")
    path = svc.blobs.path_for(row.blob.key)
    try:
        return await asyncio.to_thread(render, path, frame, opts, svc.max_decoded_bytes)
    except DecodeTooLarge as exc:
        raise _too_large(row, exc) from exc
    except RegionError as exc:
        raise InvalidRequest(f"invalid viewport for {row.uid}: {exc}") from exc
    except RenderError as exc:
        raise NotFound(f"cannot render {row.uid}: {exc}") from exc


def _too_large(row: InstanceRow, exc: DecodeTooLarge) -> PayloadTooLarge:
    """The 413 of a frame that would decode beyond the limit, its reason in a Warning."""
    text = f"cannot render {row.uid}: {exc}"
    return PayloadTooLarge(text, headers={"Warning": warning_header(text)})


async def thumbnail(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    uids: Sequence[str | None],
    frame: int | None,
) -> Response:
    """One representative image (PS3.18 §10.4.1.1.4): the frame, or the middle frame of
    the instance, or of a series' or study's middle instance."""
    accept = requested_accept(request)
    media = choose_media(accept, tuple(MEDIA), "thumbnails")
    opts = render_options(request.query_params, media, thumbnail=True)
    study, series, sop = _split(uids)
    rows = await instance_rows(svc, access, study, series, sop)
    row = rows[len(rows) // 2]
    chosen = frame if frame is not None else frame_count_of(row) // 2 + 1
    return Response(await _render(svc, row, chosen, opts), media_type=media)


def _split(uids: Sequence[str | None]) -> tuple[str, str | None, str | None]:
    study, series, sop = (*uids, None, None, None)[:3]
    assert study is not None
    return study, series, sop


async def rendered(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    uids: Sequence[str | None],
    frame: int | None = None,
) -> Response:
    """A study, series, instance or frame rendered (PS3.18 §10.4.1.1.3): one image when
    a single-part type is chosen for an instance or frame, else a multipart/related
    of every image (``rendered_media``)."""
    study, series, sop = _split(uids)
    accept = requested_accept(request)
    chosen = choose_rendered(accept, single_item=sop is not None)
    opts = render_options(request.query_params, chosen.media_type)
    warnings = rendered_warnings(request.query_params)
    rows = await instance_rows(svc, access, study, series, sop)
    if frame is not None:
        items = [(rows[0], frame)]
    elif not chosen.multipart:
        (row,) = rows
        if (count := frame_count_of(row)) > 1:
            warnings.append(
                f"only frame 1 of the {count} frames of {row.uid} is rendered: ask for"
                f' multipart/related; type="{chosen.media_type}" for one part per frame'
            )
        items = [(row, 1)]
    else:
        items, skipped = _images(rows)
        if skipped:
            warnings.append(skipped)
        _check_sizes(svc, items)
    first = await _render(svc, *items[0], opts)
    response = _answer(svc, chosen, items, opts, first, multi_frame=frame is None)
    for text in bounded(warnings, "warnings"):
        response.headers.append("Warning", warning_header(text))
    return response


def _images(rows: list[InstanceRow]) -> tuple[list[tuple[InstanceRow, int]], str | None]:
    """Every frame of every instance that has pixel data this server can decode, and
    a warning counting the instances left out; 404 when none is left."""
    kept = [r for r in rows if r.extra.get("frames") != 0 and can_decode(r.transfer_syntax_uid)]
    if not kept:
        raise NotFound("none of these instances has pixel data this server can render")
    left = len(rows) - len(kept)
    skipped = None
    if left:
        skipped = f"{left} instances without pixel data this server can decode are not rendered"
    return [(row, n) for row in kept for n in range(1, frame_count_of(row) + 1)], skipped


def _check_sizes(svc: DicomwebServices, items: list[tuple[InstanceRow, int]]) -> None:
    """413 before the response starts when one of the frames would decode to more than
    the server decodes at once, as the index records them (``decode_limit``; a frame
    whose codestream says more is refused when its turn comes)."""
    for row, number in items:
        if number != 1:
            continue  # every frame of an instance has the same size
        extra = row.extra
        attrs = {
            "Rows": extra.get("rows"),
            "Columns": extra.get("columns"),
            "SamplesPerPixel": extra.get("samples"),
            "BitsAllocated": extra.get("bits"),
        }
        try:
            check_decode(attrs, 1, svc.max_decoded_bytes, "a frame")
        except DecodeTooLarge as exc:
            raise _too_large(row, exc) from exc
        except (TypeError, ValueError):
            continue  # the renderer reads the file's own attributes, and says what is wrong


def _answer(
    svc: DicomwebServices,
    chosen: RenderedMedia,
    items: list[tuple[InstanceRow, int]],
    opts: RenderOptions,
    first: bytes,
    *,
    multi_frame: bool,
) -> Response:
    """The rendered images: ``first`` alone, or as the first part of a multipart body
    whose other parts are rendered as it is sent."""
    if not chosen.multipart:
        return Response(first, media_type=chosen.media_type)
    boundary = new_boundary()

    def parts() -> Iterator[OutPart]:
        for index, (row, number) in enumerate(items):
            body = single_chunk(first) if index == 0 else _rendered_later(svc, row, number, opts)
            whole = multi_frame and frame_count_of(row) == 1
            path = "rendered" if whole else f"frames/{number}/rendered"
            location = f"{instance_url(svc, row.file)}/{path}"
            yield OutPart(chosen.media_type, body, (("Content-Location", location),))

    media = related_content_type(boundary, chosen.media_type)
    return StreamingResponse(write_parts(parts(), boundary), media_type=media)


async def _rendered_later(
    svc: DicomwebServices, row: InstanceRow, number: int, opts: RenderOptions
) -> AsyncIterator[bytes]:
    """A part rendered when its turn comes; one that cannot be breaks the response off
    (its status is sent already)."""
    try:
        data = await _render(svc, row, number, opts)
    except FhirError as exc:
        raise ResponseBrokenOff(f"rendered part {row.uid} frame {number}: {exc}") from exc
    yield data


async def wado_uri(svc: DicomwebServices, request: Request, access: Access) -> Response:
    """WADO-URI Retrieve Instance (PS3.18 §9.1): the file, or a rendered frame."""
    q = request.query_params
    study, series, sop = check_uri_request(q)
    media = choose_media(q.get("contentType"), URI_MEDIA, "WADO-URI responses")
    if media == DICOM:
        check_uri_dicom(q)
        (row,) = await instance_rows(svc, access, study, series, sop)
        wanted = q.get("transferSyntax")
        accept = f"{DICOM}; transfer-syntax={wanted}" if wanted else None
        syntaxes = acceptable_syntaxes(accept, row.transfer_syntax_uid)
        if not syntaxes:
            raise NotAcceptable(f"cannot serve {row.transfer_syntax_uid} as {wanted}")
        # transcoded before the status goes out: a decoder failure is a 406, not a cut-off
        body = await stored_or_transcoded(svc, row.file, syntaxes)
        if isinstance(body, bytes):
            return Response(body, media_type=DICOM)
        return StreamingResponse(svc.blobs.open(row.blob.key), media_type=DICOM)
    check_uri_presentation(q)
    options, frame = uri_render_options(q, media), uri_frame(q.get("frameNumber"))
    unapplied = annotation_warning(q.get("annotation"))
    (row,) = await instance_rows(svc, access, study, series, sop)
    response = Response(await _render(svc, row, frame, options), media_type=media)
    if unapplied is not None:
        response.headers.append("Warning", warning_header(unapplied))
    return response
