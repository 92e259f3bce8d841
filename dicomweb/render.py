"""Pixels out of stored instances: raw frames and rendered images (PS3.18 §8.3.5, §9.5).

Blocking (numpy, pydicom, Pillow): callers run these in a worker thread.
A rendered greyscale image follows the PS3.3 §C.11.2.1.2 pipeline: the
Modality LUT (rescale), then one VOI transformation mapping straight to
0..255 (the requested window, else the dataset's first window with its VOI
LUT Function, else its VOI LUT, else a window spanning the frame's minimum
and maximum), inverted for MONOCHROME1. PALETTE COLOR goes through its
palette, other colour images are scaled to 8 bits. A WADO-URI region (a
fraction of the image) is cut first, then the viewport's source region (and
flipped), fitted into the viewport keeping the aspect ratio, and encoded as
JPEG, PNG or GIF.

Nothing larger than the decoded frame is made, and nothing is decoded beyond
the server's limit (``decode_limit``, checked first from the header, then from
the frame's own codestream when it is compressed). The window is chosen over
the whole frame; the display levels are then made from the source region a band
of rows at a time, so the floating-point working copies stay the size of a
band, and each band is box-reduced as it is made when the output is much
smaller (a thumbnail of a large image), as Pillow's ``reducing_gap`` does,
leaving Lanczos the last factor of three.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

from dicomweb.decode_limit import check_decode
from dicomweb.pixel_codec import check_stored_frame
from dicomweb.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

NATIVE_LE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
# Rendered media types for single-frame images, PS3.18 Table 8.7.4-1 (image/jp2 is optional)
MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
WindowFunction = Literal["linear", "linear-exact", "sigmoid"]
# VOI LUT Function (0028,1056) defined terms (PS3.3 §C.11.2.1.3) by their PS3.18 names
DATASET_FUNCTIONS: dict[str, WindowFunction] = {
    "LINEAR": "linear",
    "LINEAR_EXACT": "linear-exact",
    "SIGMOID": "sigmoid",
}
WINDOW_FUNCTIONS: tuple[WindowFunction, ...] = ("linear", "linear-exact", "sigmoid")
Array = np.ndarray[Any, Any]
# WADO-URI ``region``: x1, y1, x2, y2 as fractions of the columns and rows (PS3.18 §8.2.4)
Region = tuple[float, float, float, float]


class RenderError(ValueError):
    """The frame does not exist or its pixels cannot be decoded."""


class RegionError(ValueError):
    """The viewport asks for what cannot be made: a source region outside the
    image, or an output larger than ``MAX_EDGE`` a side."""


# Rendered images are at most this many pixels a side: an enlarging viewport could
# otherwise ask for gigabytes (60000x60000 RGB is 10 GB) from one request.
MAX_EDGE = 4096
# Display levels are made this many samples at a time: a band's float working copies
# (modality values, the window's output) take about 8 bytes a sample each
BAND_SAMPLES = 2**18
# A region at least this many times its output is first box-reduced by whole factors
# (Pillow's ``reducing_gap``: at 3, "indistinguishable" from Lanczos alone)
REDUCING_GAP = 3


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 §C.11.2.1.2): centre, width and function."""

    center: float
    width: float
    function: WindowFunction = "linear"

    def problem(self) -> str | None:
        """Why the window cannot be applied, or None (§C.11.2.1.2.1, §C.11.2.1.3)."""
        if self.function == "linear" and not self.width >= 1:
            return "a linear window's width must be at least 1"
        if not self.width > 0:
            return f"a {self.function} window's width must be positive"
        return None


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3): the output's bounds and
    the source region (a negative ``sw``/``sh`` flips it). A missing bound leaves
    that side free; ``enlarge=False`` only ever shrinks (default thumbnails)."""

    width: int | None
    height: int | None
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None
    enlarge: bool = True


THUMBNAIL = Viewport(128, 128, enlarge=False)


@dataclass(frozen=True)
class RenderOptions:
    """What to render: output media type, VOI window, viewport, JPEG quality, and the
    region of the image (WADO-URI) the viewport applies to."""

    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90
    region: Region | None = None


def stored_frame_size(extra: dict[str, Any]) -> int | None:
    """Bytes per natively stored frame (PS3.5 §8.2), or None when samples are not whole
    bytes. YBR_FULL_422 keeps two chroma samples per two pixels (PS3.3 §C.7.6.3.1.2)."""
    bits, rows, cols = (int(extra.get(key) or 0) for key in ("bits", "rows", "columns"))
    if not bits or bits % 8 or not rows or not cols:
        return None
    samples = int(extra.get("samples") or 1)
    full = rows * cols * samples * bits // 8
    if samples != 3:
        return full
    subsampled = full // 3 * 2
    if "photometric" in extra:
        return subsampled if extra["photometric"] == "YBR_FULL_422" else full
    # Index entries do not record the photometric interpretation: a pixel data
    # length that is exactly that of subsampled frames (plus the even-length pad)
    # tells YBR_FULL_422 apart.
    length, frames = (extra.get("pixel") or {}).get("length"), int(extra.get("frames") or 1)
    return subsampled if length in (frames * subsampled, frames * subsampled + 1) else full


def native_frame_range(extra: dict[str, Any], ts: str, frame: int) -> tuple[int, int] | None:
    """(offset, length) of frame ``frame`` (1-based) in the file, when the pixel data is
    native little endian with whole-byte samples; None when it must be decoded."""
    pixel = extra.get("pixel")
    if ts not in NATIVE_LE or not pixel or pixel.get("length") is None:
        return None
    size = stored_frame_size(extra)
    if size is None:
        return None
    if frame * size > pixel["length"]:
        raise RenderError(f"frame {frame} is beyond the pixel data")
    return pixel["offset"] + (frame - 1) * size, size


def _frame(path: Path, index: int, ds: Dataset) -> Array:
    """Frame ``index`` (0-based) of the file, decoded; ``ds`` is its header, read
    already (its transfer syntax says how to read the pixels)."""
    try:
        # pydicom's path reader decodes one frame without reading the others, but it
        # cannot inflate a deflated data set (PS3.5 §A.5): that one is read whole
        ts = ds.file_meta.get("TransferSyntaxUID")
        source = dcmread(path) if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else path
        return pixel_array(source, index=index)
    except (IndexError, ValueError) as exc:
        raise RenderError(f"frame {index + 1}: {exc}") from exc
    except (RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise RenderError(f"cannot decode the pixel data: {exc}") from exc


def apply_window(values: Array, window: Window) -> Array:
    """Map modality values through ``window`` onto 0..255, as floats: linear
    (PS3.3 §C.11.2.1.2.1), linear-exact (§C.11.2.1.3.2) or sigmoid (§C.11.2.1.3.1)."""
    c, w, x = window.center, window.width, values.astype(float)
    if window.function == "sigmoid":
        # clipped so that exp cannot overflow; beyond ±500 the output is 0 or 255 anyway
        return 255 / (1 + np.exp(np.clip(-4 * (x - c) / w, -500, 500)))
    if window.function == "linear-exact":
        return np.clip(((x - c) / w + 0.5) * 255, 0, 255)
    if w == 1:  # the linear ramp is empty: a threshold at c - 0.5
        return np.where(x > c - 0.5, 255.0, 0.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)


def dataset_window(ds: Dataset) -> Window | None:
    """The dataset's default window: its first centre/width pair, with its VOI LUT
    Function (LINEAR when absent or unknown); None when absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        centre, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None
    function = DATASET_FUNCTIONS.get(str(ds.get("VOILUTFunction", "")).upper(), "linear")
    window = Window(centre, width, function)
    return window if window.problem() is None else None


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, MultiValue | list | tuple) else float(value)


def _voi_lut(values: Array, ds: Dataset) -> Array:
    """The first VOI LUT (PS3.3 §C.11.2.1.1), its output range scaled onto 0..255."""
    try:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi(np.rint(values).astype(np.int64), ds)
    except (AttributeError, IndexError, KeyError, NotImplementedError, ValueError) as exc:
        raise RenderError(f"cannot apply the VOI LUT: {exc}") from exc
    levels: Array = out.astype(float) * 255 / (2**bits - 1)
    return levels


def _full_range(array: Array, ds: Dataset) -> Window | None:
    """A window from the frame's least to its greatest modality value (linear-exact:
    min→0, max→255), found band by band."""
    ranges = [(np.min(v), np.max(v)) for v in map(apply_modality_lut, bands(array), repeat(ds))]
    low, high = float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))
    return Window((low + high) / 2, high - low, "linear-exact") if high > low else None


def frame_window(array: Array, ds: Dataset, requested: Window | None) -> Window | None:
    """The window for a whole greyscale frame: the requested one, else the dataset's,
    else (without a VOI LUT to apply) one spanning its values; None for colour."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        return None
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return None
    window = requested or dataset_window(ds)
    if window is None and not ds.get("VOILUTSequence"):
        window = _full_range(array, ds)
    return window


def grey_levels(array: Array, ds: Dataset, window: Window | None) -> Array:
    """Greyscale display levels as uint8 (PS3.3 §C.11.2.1.2) through the frame's
    ``window`` (``frame_window``); without one, the VOI LUT, else black (a flat frame)."""
    values = apply_modality_lut(array, ds)
    if window is not None:
        levels = apply_window(values, window)
    elif ds.get("VOILUTSequence"):
        levels = _voi_lut(values, ds)
    else:
        levels = np.zeros(values.shape)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        levels = 255 - levels
    grey: Array = np.rint(levels).astype(np.uint8)
    return grey


def _scaled(array: Array, bits: int) -> Array:
    if array.dtype == np.uint8 and bits == 8:
        return array
    scaled: Array = np.rint(array.astype(float) * 255 / (2**bits - 1)).astype(np.uint8)
    return scaled


def palette_colours(array: Array, ds: Dataset) -> Array:
    """A PALETTE COLOR frame through its palette (PS3.3 §C.7.6.3.1.5, §C.7.9) as RGB."""
    try:
        rgb = apply_color_lut(array, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, IndexError, KeyError, ValueError) as exc:
        raise RenderError(f"cannot apply the palette: {exc}") from exc
    return _scaled(rgb[..., :3], bits)


def display_levels(array: Array, ds: Dataset, window: Window | None) -> Array:
    """Frame pixels as 8-bit greyscale or RGB, ready to encode (greyscale through the
    whole frame's window, ``frame_window``)."""
    photometric = ds.get("PhotometricInterpretation")
    if photometric == "PALETTE COLOR":
        return palette_colours(array, ds)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return _scaled(array, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8))
    return grey_levels(array, ds, window)


def source_box(size: tuple[int, int], vp: Viewport) -> tuple[int, int, int, int]:
    """The source region (left, top, right, bottom) within an image of ``size``,
    clipped to it; RegionError when it is empty or outside the image."""
    columns, rows = size
    sw = vp.sw if vp.sw is not None else columns - vp.sx
    sh = vp.sh if vp.sh is not None else rows - vp.sy
    right, bottom = min(columns, vp.sx + abs(sw)), min(rows, vp.sy + abs(sh))
    if right <= vp.sx or bottom <= vp.sy:
        raise RegionError(f"the source region is empty or outside the {columns}x{rows} image")
    return vp.sx, vp.sy, right, bottom


def region_box(size: tuple[int, int], region: Region) -> tuple[int, int, int, int]:
    """The pixels (left, top, right, bottom) a normalised region covers in an image of
    ``size``: every pixel it touches, at least one each way."""
    columns, rows = size
    x1, y1, x2, y2 = region
    left, top = min(math.floor(x1 * columns), columns - 1), min(math.floor(y1 * rows), rows - 1)
    right = min(max(math.ceil(x2 * columns), left + 1), columns)
    bottom = min(max(math.ceil(y2 * rows), top + 1), rows)
    return left, top, right, bottom


def fitted_size(size: tuple[int, int], vp: Viewport) -> tuple[int, int]:
    """``size`` scaled to fit the viewport with its aspect ratio kept."""
    width, height = size
    scales = [b / s for b, s in ((vp.width, width), (vp.height, height)) if b]
    scale = min(scales, default=1.0)
    if not vp.enlarge:
        scale = min(scale, 1.0)
    fitted = max(1, round(width * scale)), max(1, round(height * scale))
    if max(fitted) > MAX_EDGE:
        raise RegionError(f"a rendered image is at most {MAX_EDGE} pixels a side, not {fitted}")
    return fitted


def reduction(size: tuple[int, int], fitted: tuple[int, int]) -> tuple[int, int]:
    """Whole box-reduction factors (x, y) that leave ``size`` at least ``REDUCING_GAP``
    times ``fitted`` (1: no reduction)."""
    (width, height), (out_w, out_h) = size, fitted
    return max(1, width // (out_w * REDUCING_GAP)), max(1, height // (out_h * REDUCING_GAP))


def bands(array: Array, multiple: int = 1) -> Iterator[Array]:
    """Views of ``array`` a band of rows at a time: about ``BAND_SAMPLES`` samples,
    a whole number of ``multiple`` rows."""
    rows = max(multiple, BAND_SAMPLES // max(1, array[0].size) // multiple * multiple)
    return (array[top : top + rows] for top in range(0, len(array), rows))


def banded_levels(
    array: Array, ds: Dataset, window: Window | None, factors: tuple[int, int]
) -> Array:
    """``display_levels`` of ``array`` a band at a time, each band box-reduced by
    ``factors`` as it is made (a partial block at the edge is averaged as it is)."""
    rows = -(-len(array) // factors[1])
    out: Array | None = None
    top = 0
    for band in bands(array, factors[1]):
        levels = display_levels(band, ds, window)
        if factors != (1, 1):
            levels = np.asarray(Image.fromarray(levels).reduce(factors))
        if out is None:
            out = np.empty((rows, *levels.shape[1:]), np.uint8)
        out[top : top + len(levels)] = levels
        top += len(levels)
    assert out is not None  # an array has at least one row
    return out


def display_image(array: Array, ds: Dataset, options: RenderOptions) -> Image.Image:
    """The frame's display levels: its region cut (WADO-URI), then its viewport's source
    region (flipped where its width or height is negative), fitted to the viewport."""
    window = frame_window(array, ds, options.window)  # the whole frame's, as without a region
    if options.region is not None:
        left, top, right, bottom = region_box((array.shape[1], array.shape[0]), options.region)
        array = array[top:bottom, left:right]
    vp = options.viewport
    if vp is None:
        return Image.fromarray(banded_levels(array, ds, window, (1, 1)))
    left, top, right, bottom = source_box((array.shape[1], array.shape[0]), vp)
    region = array[top:bottom, left:right]
    if vp.sw is not None and vp.sw < 0:
        region = region[:, ::-1]
    if vp.sh is not None and vp.sh < 0:
        region = region[::-1]
    size = fitted_size((right - left, bottom - top), vp)
    factors = reduction((right - left, bottom - top), size)
    image = Image.fromarray(banded_levels(region, ds, window, factors))
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """The image in ``media_type``; ``quality`` only matters to lossy JPEG."""
    out = io.BytesIO()
    fmt = MEDIA[media_type]
    if fmt == "JPEG":
        image.save(out, fmt, quality=quality)
    else:
        image.save(out, fmt)
    return out.getvalue()


def render(path: Path, frame: int, options: RenderOptions, limit: int) -> bytes:
    """Frame ``frame`` (1-based) as a JPEG, PNG or GIF image (PS3.18 §8.3.5.1);
    DecodeTooLarge, before decoding, when a frame decodes to more than ``limit`` bytes."""
    with path.open("rb") as source:
        ds = dcmread(source, stop_before_pixels=True)
        try:
            check_decode(ds, 1, limit, "a frame")
        except (TypeError, ValueError) as exc:
            raise RenderError(f"invalid image pixel attributes: {exc}") from exc
        try:
            check_stored_frame(source, ds, frame - 1, limit)
        except ValueError as exc:  # what the decoder would fail on too
            raise RenderError(f"frame {frame}: {exc}") from exc
    image = display_image(_frame(path, frame - 1, ds), ds, options)
    return encode(image, options.media_type, options.quality)
