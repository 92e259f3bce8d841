"""Rendered and thumbnail resources, and WADO-URI (PS3.18 §8.3.5, §10.4.1.1.4, §9).

``/rendered`` and ``/thumbnail`` answer ``image/jpeg`` (the default),
``image/png`` or ``image/gif``, chosen from the ``accept`` query parameter
when given, else the Accept header (PS3.18 §8.3.3.1); anything else is a 406.
They take ``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``
and ``quality`` (PS3.18 Table 8.3.5-1); a malformed value is a 400. WADO-URI
(``/wado?requestType=WADO``) serves one instance as ``application/dicom`` or
rendered, for older viewers; it does not de-identify (``anonymize`` is refused).
A frame that would decode to more than the server's limit (``decode_limit``)
is not rendered: 413, PS3.18's answer when what would be sent exceeds what the
origin server supports (PS3.2 Table N.7-92 lists it for Retrieve), the reason
in a Warning header.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.decode_limit import DecodeTooLarge
from dicomweb.http_common import Access, DicomwebServices
from dicomweb.render import (
    MEDIA,
    THUMBNAIL,
    WINDOW_FUNCTIONS,
    RegionError,
    RenderError,
    RenderOptions,
    Viewport,
    Window,
    WindowFunction,
    render,
)
from dicomweb.transfer_syntax import NotAcceptable, acceptable_syntaxes, parse_accept
from dicomweb.wado import instance_rows, stored_or_transcoded
from dicomweb.wado_pixels import frame_number
from dicomweb.warning_headers import warning_header
from fhir_server.errors import InvalidRequest, NotFound, PayloadTooLarge
from fhir_server.storage.dicom_port import InstanceRow
from fhir_server.url_integers import url_integer

DICOM = "application/dicom"
DEFAULT_QUALITY = 90
FUNCTIONS: dict[str, WindowFunction] = {name: name for name in WINDOW_FUNCTIONS}
# WADO-URI contentType values served (PS3.18 §9.1.2.1.3, Table 8.7.4-1)
URI_MEDIA = (*MEDIA, DICOM)


def choose_media(accept: str | None, supported: Sequence[str], what: str) -> str:
    """The best supported media type in an Accept-style list (with q values);
    image/jpeg when the list is empty or names a wildcard first (PS3.18 §8.7.5)."""
    if not accept or not accept.strip():
        return "image/jpeg"
    for media in parse_accept(accept):
        if media.media_type in supported:
            return media.media_type
        if media.media_type in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable(f"{what} are {', '.join(supported)}; none of {accept!r}")


# a decimal number in ASCII digits, as DICOM's DS writes one (``float`` would also
# take ``1_0``, other scripts' digits, ``inf`` and ``nan``)
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)


def _number(text: str, name: str) -> float:
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value):  # (also a finite-looking value too large for a float)
        raise InvalidRequest(f"{name} must be a number, not {text!r}")
    return value


def _window(centre: str, width: str, function: str, name: str) -> Window:
    chosen = FUNCTIONS.get(function.strip().lower())
    if chosen is None:
        raise InvalidRequest(
            f"{name}: the function must be one of {WINDOW_FUNCTIONS}, not {function!r}"
        )
    window = Window(_number(centre, f"{name} center"), _number(width, f"{name} width"), chosen)
    problem = window.problem()
    if problem is not None:
        raise InvalidRequest(f"invalid {name}: {problem}")
    return window


def parse_window(text: str | None) -> Window | None:
    """``window=center,width[,function]``, linear by default (PS3.18 §8.3.5.1.3)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"window must be center,width[,function], not {text!r}")
    return _window(parts[0], parts[1], parts[2] if len(parts) == 3 else "linear", "window")


def _integer(text: str, name: str) -> int | None:
    """An integer, or None for an empty value (spaces around it are allowed)."""
    if not text.strip():
        return None
    value = url_integer(text.strip(), signed=True)
    if value is None:
        raise InvalidRequest(f"{name} must be an integer, not {text!r}")
    return value


def parse_viewport(text: str | None) -> Viewport | None:
    """``viewport=vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 §8.3.5.1.3); an empty value
    takes its default (vw or vh: unbounded; sx, sy: 0; sw, sh: to the image's edge)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise InvalidRequest(f"viewport must be vw,vh or vw,vh,sx,sy,sw,sh, not {text!r}")
    vw, vh, *source = (_integer(p, "each viewport value") for p in parts)
    if (vw is None and vh is None) or any(v is not None and v < 1 for v in (vw, vh)):
        raise InvalidRequest(f"viewport width and height must be positive: {text!r}")
    if not source:
        return Viewport(vw, vh)
    sx, sy, sw, sh = source
    if (sx or 0) < 0 or (sy or 0) < 0 or sw == 0 or sh == 0:
        raise InvalidRequest(f"viewport sx, sy must be >= 0 and sw, sh non-zero: {text!r}")
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def parse_quality(text: str | None, name: str = "quality") -> int:
    """``quality`` (WADO-URI ``imageQuality``): an integer 1..100 (PS3.18 §8.3.5.1.2)."""
    if text is None:
        return DEFAULT_QUALITY
    value = _integer(text, name)
    if value is None or not 1 <= value <= 100:
        raise InvalidRequest(f"{name} must be an integer from 1 to 100, not {text!r}")
    return value


def render_options(request: Request, media: str, *, thumbnail: bool = False) -> RenderOptions:
    """Window, viewport and quality from the query (PS3.18 Table 8.3.5-1)."""
    q = request.query_params
    viewport = parse_viewport(q.get("viewport"))
    return RenderOptions(
        media,
        parse_window(q.get("window")),
        viewport or (THUMBNAIL if thumbnail else None),
        parse_quality(q.get("quality")),
    )


async def _render(
    svc: DicomwebServices, row: InstanceRow, frame: int, opts: RenderOptions
) -> bytes:
    # A frame the instance does not have is an error in the request (PS3.18 §8.3.5.2);
    # an instance without pixel data gets as far as the decoder, which says so.
    count = max(int(row.extra.get("frames") or 0), 1)
    if not 1 <= frame <= count:
        raise InvalidRequest(f"instance {row.uid} has frames 1 to {count}, not {frame}")
    path = svc.blobs.path_for(row.blob.key)
    try:
        return await asyncio.to_thread(render, path, frame, opts, svc.max_decoded_bytes)
    except DecodeTooLarge as exc:
        text = f"cannot render {row.uid}: {exc}"
        raise PayloadTooLarge(text, headers={"Warning": warning_header(text)}) from exc
    except RegionError as exc:
        raise InvalidRequest(f"invalid viewport for {row.uid}: {exc}") from exc
    except RenderError as exc:
        raise NotFound(f"cannot render {row.uid}: {exc}") from exc


async def rendered(
    svc: DicomwebServices,
    request: Request,
    access: Access,
    uids: Sequence[str | None],
    frame: int | None = None,
    *,
    thumbnail: bool = False,
) -> Response:
    """A rendered (or thumbnail) image of an instance, a frame, or a series' or study's
    representative instance (the middle one). Without a frame, a multi-frame instance
    is rendered as its first frame (its thumbnail: the middle frame), not as a
    multi-frame media type."""
    accept = request.query_params.get("accept") or request.headers.get("accept")
    media = choose_media(accept, tuple(MEDIA), "rendered images")
    opts = render_options(request, media, thumbnail=thumbnail)
    study, series, sop = (*uids, None, None, None)[:3]
    assert study is not None
    rows = await instance_rows(svc, access, study, series, sop)
    row = rows[len(rows) // 2]
    middle = max(int(row.extra.get("frames") or 1), 1) // 2 + 1
    chosen = frame if frame is not None else (middle if thumbnail else 1)
    return Response(await _render(svc, row, chosen, opts), media_type=media)


def check_uri_request(q: Mapping[str, str]) -> tuple[str, str, str]:
    """The three UIDs of a WADO-URI request, after its general checks (PS3.18 §9.1.2)."""
    if q.get("requestType") != "WADO":
        raise InvalidRequest("requestType must be WADO")
    if "anonymize" in q:
        # returning the data unchanged would silently leak identities
        raise InvalidRequest("anonymize is not supported: this server does not de-identify")
    study, series, sop = q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")
    if not (study and series and sop):
        raise InvalidRequest("studyUID, seriesUID and objectUID are required")
    return study, series, sop


def uri_frame(text: str | None) -> int:
    """``frameNumber``: 1 when absent, else a positive integer (PS3.18 §9.1.2.2)."""
    return 1 if text is None else frame_number(text.strip(), "frameNumber")


def _size(text: str | None, name: str) -> int | None:
    value = _integer(text, name) if text is not None else None
    if text is not None and (value is None or value < 1):
        raise InvalidRequest(f"{name} must be a positive integer, not {text!r}")
    return value


def uri_render_options(q: Mapping[str, str], media: str) -> RenderOptions:
    """windowCenter/windowWidth (linear), rows/columns (either alone keeps the aspect
    ratio; both bound the image) and imageQuality (PS3.18 §9.1.2.2)."""
    centre, width = q.get("windowCenter"), q.get("windowWidth")
    if (centre is None) != (width is None):
        raise InvalidRequest("windowCenter and windowWidth must be given together")
    window = None
    if centre is not None and width is not None:
        window = _window(centre, width, "linear", "windowCenter/windowWidth")
    rows, columns = _size(q.get("rows"), "rows"), _size(q.get("columns"), "columns")
    viewport = Viewport(columns, rows) if rows or columns else None
    quality = parse_quality(q.get("imageQuality"), "imageQuality")
    return RenderOptions(media, window, viewport, quality)


async def wado_uri(svc: DicomwebServices, request: Request, access: Access) -> Response:
    """WADO-URI Retrieve Instance (PS3.18 §9.1): the file, or a rendered frame."""
    q = request.query_params
    study, series, sop = check_uri_request(q)
    media = choose_media(q.get("contentType"), URI_MEDIA, "WADO-URI responses")
    if media == DICOM:
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
    options, frame = uri_render_options(q, media), uri_frame(q.get("frameNumber"))
    (row,) = await instance_rows(svc, access, study, series, sop)
    return Response(await _render(svc, row, frame, options), media_type=media)
