"""Pixels out of stored instances: raw frames and rendered images (PS3.18 §8.3.5, §9.5).

Blocking (numpy, pydicom, Pillow): callers run these in a worker thread.
A rendered image applies the Modality LUT (rescale), then the VOI: the
requested window, else the dataset's default window or VOI LUT, else the
frame's minimum and maximum; it is scaled to 8 bits, fitted into the viewport
(aspect ratio kept) and encoded as JPEG or PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from dicomweb.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

NATIVE_LE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG"}
THUMBNAIL_SIZE = (128, 128)


class RenderError(ValueError):
    """The frame does not exist or its pixels cannot be decoded."""


@dataclass(frozen=True)
class RenderOptions:
    """``window`` (centre, width), ``viewport`` (width, height), output media type."""

    media_type: str = "image/jpeg"
    window: tuple[float, float] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def native_frame_range(extra: dict[str, Any], ts: str, frame: int) -> tuple[int, int] | None:
    """(offset, length) of frame ``frame`` (1-based) in the file, when the pixel data is
    native little endian with whole-byte samples; None when it must be decoded."""
    pixel = extra.get("pixel")
    bits, rows, cols = extra.get("bits"), extra.get("rows"), extra.get("columns")
    if ts not in NATIVE_LE or not pixel or pixel.get("length") is None:
        return None
    if not bits or bits % 8 or not rows or not cols:
        return None
    size = rows * cols * (extra.get("samples") or 1) * bits // 8
    if frame * size > pixel["length"]:
        raise RenderError(f"frame {frame} is beyond the pixel data")
    return pixel["offset"] + (frame - 1) * size, size


def _frame(path: Path, index: int, *, raw: bool) -> np.ndarray[Any, Any]:
    try:
        return pixel_array(path, index=index, raw=raw)
    except (IndexError, ValueError) as exc:
        raise RenderError(f"frame {index + 1}: {exc}") from exc
    except (RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise RenderError(f"cannot decode the pixel data: {exc}") from exc


def decoded_frame(path: Path, frame: int) -> bytes:
    """Frame ``frame`` (1-based) as uncompressed little-endian bytes (PS3.18 §8.7.3.3.1)."""
    array = _frame(path, frame - 1, raw=True)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _voi(array: np.ndarray[Any, Any], ds: Dataset, window: tuple[float, float] | None) -> Any:
    if window is not None:
        centre, width = window
        low, high = centre - width / 2, centre + width / 2
        return np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        array = apply_voi_lut(array, ds)
    low, high = float(np.min(array)), float(np.max(array))
    return (array - low) / (high - low) if high > low else np.zeros_like(array, dtype=float)


def render(path: Path, frame: int, options: RenderOptions) -> bytes:
    """Frame ``frame`` (1-based) as a JPEG or PNG image (PS3.18 §8.3.5.1)."""
    ds = dcmread(path, stop_before_pixels=True)
    array = _frame(path, frame - 1, raw=False)
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if colour:
        scaled = np.clip(array, 0, 255).astype(np.uint8) if array.dtype != np.uint8 else array
    else:
        values = apply_modality_lut(array, ds).astype(float)
        unit = _voi(values, ds, options.window)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            unit = 1 - unit
        scaled = (unit * 255).round().astype(np.uint8)
    image = Image.fromarray(scaled, "RGB" if colour else "L")
    if options.viewport is not None:
        image.thumbnail(options.viewport)
    out = io.BytesIO()
    fmt = MEDIA[options.media_type]
    image.save(out, fmt, quality=options.quality) if fmt == "JPEG" else image.save(out, fmt)
    return out.getvalue()
