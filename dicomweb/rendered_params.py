"""The rendering query parameters of ``/rendered``, ``/thumbnail`` and WADO-URI, read
and checked (PS3.18 §8.3.5.1, §9.1.2, §8.2): pure functions of the query.

What is applied: ``window``, ``viewport`` and ``quality`` (WADO-URI:
windowCenter/windowWidth, rows/columns, region, imageQuality). What is not, and
says so: ``annotation`` (no text is burned in) and ``iccprofile`` (no profile is
embedded or converted to) are checked and, when valid, answered with a
``Warning: 299``; presentation states (WADO-URI ``presentationUID``) are not
applied, which is a 400: an image rendered without the presentation state it
was asked through is not what was asked for. A malformed value is a 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from dicomweb.render import (
    THUMBNAIL,
    WINDOW_FUNCTIONS,
    Region,
    RenderOptions,
    Viewport,
    Window,
    WindowFunction,
)
from dicomweb.wado_pixels import frame_number
from fhir_server.errors import InvalidRequest
from fhir_server.url_integers import url_integer

DEFAULT_QUALITY = 90
FUNCTIONS: dict[str, WindowFunction] = {name: name for name in WINDOW_FUNCTIONS}
# PS3.18 §8.3.5.1.1: keywords, case-sensitive (%s)
ANNOTATIONS = ("patient", "technique")
# PS3.18 §8.3.5.1.5 (Table 8.3.5-1)
ICC_PROFILES = ("no", "yes", "srgb", "adobergb", "rommrgb")
# WADO-URI parameters that only a rendered answer can honour (PS3.18 §9.1.2; §8.2:
# "shall not be present if contentType is application/dicom")
URI_RENDERING = (
    "annotation",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "presentationUID",
    "presentationSeriesUID",
)
PRESENTATION = ("presentationUID", "presentationSeriesUID")

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


def parse_region(text: str | None) -> Region | None:
    """WADO-URI ``region=x1,y1,x2,y2``: the top left and bottom right corners of the part
    of the image wanted, as fractions of its columns and rows (PS3.18 §8.2.4); an
    ill-defined region is a 400."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise InvalidRequest(f"region must be four numbers x1,y1,x2,y2, not {text!r}")
    x1, y1, x2, y2 = (_number(p, "each region value") for p in parts)
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise InvalidRequest(
            f"region must be x1,y1,x2,y2 from 0 to 1 with x1 < x2 and y1 < y2, not {text!r}"
        )
    return x1, y1, x2, y2


def annotation_warning(text: str | None) -> str | None:
    """``annotation=patient,technique`` (PS3.18 §8.3.5.1.1): checked, and answered with
    why nothing is burned in; None when absent. An unknown keyword is a 400."""
    if text is None:
        return None
    keywords = [k.strip() for k in text.split(",")]
    wrong = [k for k in keywords if k not in ANNOTATIONS]
    if wrong or not keywords:
        raise InvalidRequest(
            f"annotation must be one or more of {', '.join(ANNOTATIONS)}, not {text!r}"
        )
    return f"annotation={text} was not applied: this server burns no annotations into images"


def icc_warning(text: str | None) -> str | None:
    """``iccprofile`` (PS3.18 §8.3.5.1.5): checked; ``no`` (the default: no profile in
    the image) is what is sent anyway, any other value is answered with why it was
    not applied. An unknown value is a 400."""
    if text is None or text == "no":
        return None
    if text not in ICC_PROFILES:
        raise InvalidRequest(f"iccprofile must be one of {', '.join(ICC_PROFILES)}, not {text!r}")
    return f"iccprofile={text} was not applied: rendered images carry no ICC profile"


def rendered_warnings(q: Mapping[str, str]) -> list[str]:
    """What the rendered answer will say it did not apply (``annotation``, ``iccprofile``)."""
    found = (annotation_warning(q.get("annotation")), icc_warning(q.get("iccprofile")))
    return [text for text in found if text is not None]


def render_options(q: Mapping[str, str], media: str, *, thumbnail: bool = False) -> RenderOptions:
    """Window, viewport and quality from the query (PS3.18 Table 8.3.5-1)."""
    viewport = parse_viewport(q.get("viewport"))
    return RenderOptions(
        media,
        parse_window(q.get("window")),
        viewport or (THUMBNAIL if thumbnail else None),
        parse_quality(q.get("quality")),
    )


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


def check_uri_dicom(q: Mapping[str, str]) -> None:
    """An ``application/dicom`` answer takes no rendering parameter (PS3.18 §8.2):
    the file is sent as stored, so one would be ignored."""
    given = [name for name in URI_RENDERING if name in q]
    if given:
        raise InvalidRequest(
            f"{', '.join(given)} cannot be used with contentType=application/dicom:"
            " they apply to rendered images only"
        )


def check_uri_presentation(q: Mapping[str, str]) -> None:
    """A presentation state to render through (PS3.18 §8.2.9) is not applied here: a
    400, rather than an image that would look as if it had been."""
    given = [name for name in PRESENTATION if name in q]
    if given:
        raise InvalidRequest(f"{', '.join(given)}: this server does not apply presentation states")


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
    ratio; both bound the image), region and imageQuality (PS3.18 §9.1.2.2, §8.2)."""
    centre, width = q.get("windowCenter"), q.get("windowWidth")
    if (centre is None) != (width is None):
        raise InvalidRequest("windowCenter and windowWidth must be given together")
    window = None
    if centre is not None and width is not None:
        window = _window(centre, width, "linear", "windowCenter/windowWidth")
    rows, columns = _size(q.get("rows"), "rows"), _size(q.get("columns"), "columns")
    viewport = Viewport(columns, rows) if rows or columns else None
    quality = parse_quality(q.get("imageQuality"), "imageQuality")
    return RenderOptions(media, window, viewport, quality, parse_region(q.get("region")))
