"""Rendered and thumbnail resources, and WADO-URI (PS3.18 §8.3.5, §10.4.1.1.4, §9).

``/rendered`` and ``/thumbnail`` answer ``image/jpeg`` (the default) or
``image/png``, with ``window=centre,width,function`` and
``viewport=width,height``; anything else in Accept is a 406. WADO-URI
(``/wado?requestType=WADO``) serves one instance as ``application/dicom`` or
rendered, for older viewers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.http_common import DicomwebServices
from dicomweb.render import MEDIA, THUMBNAIL_SIZE, RenderError, RenderOptions, render
from dicomweb.transfer_syntax import NotAcceptable, negotiate, parse_accept
from dicomweb.wado import instance_part, instance_rows
from fhir_server.access.context import AuthContext
from fhir_server.errors import InvalidRequest, NotFound
from fhir_server.storage.dicom_port import InstanceRow


def image_media(accept: str | None, requested: str | None = None) -> str:
    """The image type to answer: ``requested`` if given, else the best Accept match."""
    if requested:
        if requested not in MEDIA:
            raise NotAcceptable(f"cannot render as {requested!r}")
        return requested
    if not accept or not accept.strip():
        return "image/jpeg"
    for media in parse_accept(accept):
        if media.media_type in MEDIA:
            return media.media_type
        if media.media_type in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable(f"rendered images are image/jpeg or image/png, not {accept!r}")


def _pair(text: str | None, name: str, kind: type[float] | type[int]) -> tuple[float, float] | None:
    if not text:
        return None
    parts = text.split(",")
    try:
        if len(parts) < 2:
            raise ValueError(text)
        return kind(parts[0]), kind(parts[1])
    except ValueError as exc:
        raise InvalidRequest(f"invalid {name} {text!r}") from exc


def render_options(request: Request, media: str, *, thumbnail: bool = False) -> RenderOptions:
    """Window and viewport from the query (PS3.18 §8.3.5.1.3)."""
    q = request.query_params
    window = _pair(q.get("window"), "window", float)
    viewport = _pair(q.get("viewport"), "viewport", int)
    size = (int(viewport[0]), int(viewport[1])) if viewport else None
    if size is not None and min(size) < 1:
        raise InvalidRequest("viewport sizes must be positive")
    return RenderOptions(media, window, size or (THUMBNAIL_SIZE if thumbnail else None))


async def _render(
    svc: DicomwebServices, row: InstanceRow, frame: int, opts: RenderOptions
) -> bytes:
    if frame < 1 or frame > max(int(row.extra.get("frames") or 0), 1):
        raise NotFound(f"instance {row.uid} has no frame {frame}")
    path = svc.blobs.path_for(row.blob.key)
    try:
        return await asyncio.to_thread(render, path, frame, opts)
    except RenderError as exc:
        raise NotFound(f"cannot render {row.uid}: {exc}") from exc


async def rendered(
    svc: DicomwebServices,
    request: Request,
    auth: AuthContext,
    uids: Sequence[str | None],
    frame: int | None = None,
    *,
    thumbnail: bool = False,
) -> Response:
    """A rendered (or thumbnail) image of an instance, a frame, or a series' or study's
    representative instance (the middle one)."""
    media = image_media(request.headers.get("accept"))
    opts = render_options(request, media, thumbnail=thumbnail)
    study, series, sop = (*uids, None, None, None)[:3]
    assert study is not None
    rows = await instance_rows(svc, auth, study, series, sop)
    row = rows[len(rows) // 2]
    middle = max(int(row.extra.get("frames") or 1), 1) // 2 + 1
    chosen = frame if frame is not None else (middle if thumbnail else 1)
    return Response(await _render(svc, row, chosen, opts), media_type=media)


async def wado_uri(svc: DicomwebServices, request: Request, auth: AuthContext) -> Response:
    """WADO-URI Retrieve Instance (PS3.18 §9.1): the file, or a rendered frame."""
    q = request.query_params
    if q.get("requestType") != "WADO":
        raise InvalidRequest("requestType must be WADO")
    uids = [q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")]
    if not all(uids):
        raise InvalidRequest("studyUID, seriesUID and objectUID are required")
    study, series, sop = (str(u) for u in uids)
    (row,) = await instance_rows(svc, auth, study, series, sop)
    content_type = (q.get("contentType") or "image/jpeg").split(",")[0].strip()
    if content_type == "application/dicom":
        wanted = q.get("transferSyntax")
        accept = f"application/dicom; transfer-syntax={wanted}" if wanted else None
        ts = negotiate(accept, row.transfer_syntax_uid)
        part = instance_part(svc, row.file, ts)
        return StreamingResponse(part.body, media_type="application/dicom")
    media = image_media(None, content_type)
    window = None
    if q.get("windowCenter") and q.get("windowWidth"):
        window = _pair(f"{q.get('windowCenter')},{q.get('windowWidth')}", "window", float)
    rows_cols = _pair(f"{q.get('columns')},{q.get('rows')}", "size", int) if q.get("rows") else None
    size = (int(rows_cols[0]), int(rows_cols[1])) if rows_cols else None
    frame = int(q.get("frameNumber") or 1)
    data = await _render(svc, row, frame, RenderOptions(media, window, size))
    return Response(data, media_type=media)
