"""The image a compressed frame's header declares, read without decoding it.

Real codestreams (pydicom's bundled files, and images encoded here by
pylibjpeg-openjpeg and Pillow) are checked against what the decoders produce
from them; forged ones are real codestreams with their size fields rewritten.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from libjpeg import decode as libjpeg_decode
from openjpeg.utils import decode as openjpeg_decode
from openjpeg.utils import encode_array
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames

from dicomweb.codestream_size import (
    MAX_SEGMENTS,
    CodestreamError,
    DeclaredImage,
    declared_bytes,
    declared_image,
    sample_bytes,
)
from tests.dicomweb.conftest import bundled

BIG = 60000  # a side no archive image has: 60000² samples are 3.6 GB


def first_frame(name: str) -> bytes:
    ds = dcmread(bundled(name))
    count = int(ds.get("NumberOfFrames") or 1)
    return next(generate_frames(ds.PixelData, number_of_frames=count))


def j2k(shape: tuple[int, ...], dtype: Any = np.uint8, **options: Any) -> bytes:
    """A black image as a JPEG 2000 codestream (``codec_format=1``: a JP2 file)."""
    colour = 1 if len(shape) == 3 else 2  # sRGB, greyscale
    return encode_array(np.zeros(shape, dtype), photometric_interpretation=colour, **options)


def jpeg(shape: tuple[int, int], mode: str = "L") -> bytes:
    """A grey ramp as a baseline JPEG, made by Pillow (libjpeg-turbo)."""
    out = io.BytesIO()
    Image.new(mode, shape[::-1], 0).save(out, "JPEG", quality=90)
    return out.getvalue()


def decoded(frame: bytes) -> int:
    """What the decoder pydicom uses produces from ``frame``: the oracle."""
    decode = libjpeg_decode if frame.startswith(b"\xff\xd8") else openjpeg_decode
    return int(decode(frame).nbytes)


# 1. Real codestreams: the size read is what the decoder produces

BUNDLED = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YCbCr
    "SC_rgb_jpeg_app14_dcmd.dcm",  # ... with an Adobe APP14 segment
    "SC_rgb_small_odd_jpeg.dcm",  # 3x3
    "JPGExtended.dcm",  # 12-bit extended
    "SC_rgb_jpeg_gdcm.dcm",  # lossless, SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS, 16-bit
    "SC_rgb_jls_lossy_sample.dcm",  # JPEG-LS, RGB, sample-interleaved
    "JPEGLSNearLossless_08.dcm",
    "JPEG2000.dcm",  # 16-bit signed
    "J2K_pixelrep_mismatch.dcm",  # 13-bit precision in 16 bits
    "GDCMJ2K_TextGBR.dcm",  # RGB
    "examples_jpeg2k.dcm",
]

ENCODED: dict[str, Callable[[], bytes]] = {
    "j2k-8bit": lambda: j2k((64, 96)),
    "j2k-12bit": lambda: j2k((64, 64), np.uint16, bits_stored=12),
    "j2k-16bit-rgb": lambda: j2k((64, 64, 3), np.uint16, bits_stored=16),
    "j2k-24bit": lambda: j2k((64, 64), np.uint32, bits_stored=24),  # decoded 4 bytes a sample
    "jp2-file": lambda: j2k((64, 96), codec_format=1),
    # an image offset on the grid: pylibjpeg-openjpeg makes its output Xsiz by Ysiz
    # (the offsets left blank), not the image's extent
    "j2k-offset-image": lambda: forged_j2k(
        Xsiz=1064, Ysiz=1064, XOsiz=1000, YOsiz=1000, XTOsiz=1000, YTOsiz=1000
    ),
    "jpeg-grey": lambda: jpeg((24, 40)),
    "jpeg-rgb": lambda: jpeg((24, 40), "RGB"),
    "jpeg-cmyk": lambda: jpeg((24, 40), "CMYK"),
}


@pytest.mark.parametrize("name", BUNDLED)
def test_a_bundled_frame_declares_what_it_decodes_to(name: str) -> None:
    frame = first_frame(name)
    assert declared_bytes(frame) == decoded(frame)


@pytest.mark.parametrize("make", ENCODED.values(), ids=ENCODED.keys())
def test_an_encoded_frame_declares_what_it_decodes_to(make: Callable[[], bytes]) -> None:
    frame = make()
    assert declared_bytes(frame) == decoded(frame)


@pytest.mark.parametrize(
    ("precision", "size"),
    [(1, 1), (8, 1), (9, 2), (12, 2), (16, 2), (17, 4), (24, 4), (32, 4), (38, 5), (0, 1)],
)
def test_a_sample_takes_the_bytes_the_decoders_give_it(precision: int, size: int) -> None:
    assert sample_bytes(precision) == size


# 2. Forged headers: real codestreams that declare another size


def patched(data: bytes, at: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, *values)
    return bytes(out)


def marker_at(data: bytes, marker: bytes, dims: tuple[int, int]) -> int:
    """Where ``marker`` is in a real stream, checked to be the frame header of ``dims``
    (Y, X at offset 5, T.81 §B.2.2)."""
    at = data.index(marker)
    assert struct.unpack_from(">HH", data, at + 5) == dims
    return at


def sof(y: int, x: int, components: int = 1, precision: int = 8, marker: int = 0xC0) -> bytes:
    """A frame header segment (T.81 §B.2.2)."""
    specs = b"".join(bytes([c + 1, 0x11, 0]) for c in range(components))
    fields = struct.pack(">BHHB", precision, y, x, components) + specs
    return struct.pack(">BBH", 0xFF, marker, len(fields) + 2) + fields


def forged_jpeg() -> bytes:
    data = jpeg((24, 40), "RGB")
    return patched(data, marker_at(data, b"\xff\xc0", (24, 40)) + 5, ">HH", BIG, BIG)


def forged_jpeg_ls() -> bytes:
    data = first_frame("MR_small_jpeg_ls_lossless.dcm")
    return patched(data, marker_at(data, b"\xff\xf7", (64, 64)) + 5, ">HH", BIG, BIG)


def oversize_jpeg_ls() -> bytes:
    """SOF55 with X and Y of 0, the size in an LSE oversize segment after it (T.87
    §C.2.4.1.4: ID 4, Wxy 4, Ye, Xe)."""
    data = first_frame("MR_small_jpeg_ls_lossless.dcm")
    at = marker_at(data, b"\xff\xf7", (64, 64))
    data = patched(data, at + 5, ">HH", 0, 0)
    end = at + 2 + struct.unpack_from(">H", data, at + 2)[0]
    lse = b"\xff\xf8" + struct.pack(">HBBII", 12, 4, 4, 100_000, 70_000)
    return data[:end] + lse + data[end:]


def with_dnl_height() -> bytes:
    data = jpeg((24, 40))
    return patched(data, marker_at(data, b"\xff\xc0", (24, 40)) + 5, ">H", 0)


def forged_j2k(**sizes: int) -> bytes:
    """A real codestream with SIZ fields rewritten (§A.5.1: Xsiz at 8, Ysiz 12,
    XOsiz 16, YOsiz 20, after SOC)."""
    data = j2k((64, 64), np.uint16, bits_stored=16)
    fields = {"Xsiz": 8, "Ysiz": 12, "XOsiz": 16, "YOsiz": 20, "XTOsiz": 32, "YTOsiz": 36}
    for name, value in sizes.items():
        data = patched(data, fields[name], ">I", value)
    return data


def htj2k_header() -> bytes:
    """An HTJ2K main header (15444-15): Rsiz with bit 14 set, a CAP segment after SIZ."""
    data = patched(forged_j2k(Xsiz=BIG, Ysiz=BIG), 6, ">H", 0x4000)
    lsiz = struct.unpack_from(">H", data, 4)[0]
    cap = b"\xff\x50" + struct.pack(">HIH", 8, 0x00020000, 0)
    return data[: 4 + lsiz] + cap + data[4 + lsiz :]


def forged_jp2(ihdr: tuple[int, int] | None = None, siz: tuple[int, int] | None = None) -> bytes:
    data = j2k((64, 96), codec_format=1)
    if ihdr:  # HEIGHT, WIDTH of the Image Header box (§I.5.3.1)
        data = patched(data, data.index(b"ihdr") + 4, ">II", *ihdr)
    if siz:
        data = patched(data, data.index(b"jp2c") + 4 + 8, ">II", *siz)
    return data


def behind(prefix: bytes, data: bytes) -> bytes:
    """``data`` (from SOI) with ``prefix`` put between its SOI and its first segment."""
    return data[:2] + prefix + data[2:]


def jpg_segment(content: bytes) -> bytes:
    """A JPG (C8) segment, reserved for extensions (T.81 Table B.1)."""
    return b"\xff\xc8" + struct.pack(">H", len(content) + 2) + content


def hidden_frame_header() -> bytes:
    """A real JPEG whose frame header is replaced by a JPG segment holding a forged
    one: libjpeg skips the segment whole (and finds no frame), Pillow looks for the
    next 0xFF inside it and takes the frame header it finds there."""
    data = jpeg((24, 40), "RGB")
    at = marker_at(data, b"\xff\xc0", (24, 40))
    end = at + 2 + struct.unpack_from(">H", data, at + 2)[0]
    return data[:at] + jpg_segment(sof(BIG, BIG, 3)) + data[end:]


HUGE_RGB = DeclaredImage(BIG, BIG, 3, 8)
FORGED: dict[str, tuple[Callable[[], bytes], DeclaredImage]] = {
    "jpeg-sof0": (forged_jpeg, HUGE_RGB),
    "jpeg-ls-sof55": (forged_jpeg_ls, DeclaredImage(BIG, BIG, 1, 16)),
    "jpeg-ls-oversize-lse": (oversize_jpeg_ls, DeclaredImage(100_000, 70_000, 1, 16)),
    "j2k-siz": (lambda: forged_j2k(Xsiz=BIG, Ysiz=BIG), DeclaredImage(BIG, BIG, 1, 16)),
    "htj2k-siz": (htj2k_header, DeclaredImage(BIG, BIG, 1, 16)),
    "jp2-file": (
        lambda: forged_jp2(ihdr=(BIG, BIG), siz=(BIG, BIG)),  # openjpeg wants them to agree
        DeclaredImage(BIG, BIG, 1, 1),
    ),
    # Pillow decodes into an image of the Image Header box's size
    "jp2-image-header": (lambda: forged_jp2(ihdr=(BIG, BIG)), DeclaredImage(BIG, BIG, 1, 1)),
    # T.81 §B.3.2: DHP declares a hierarchical image's whole size before its frames
    "jpeg-dhp": (
        lambda: behind(sof(BIG, BIG, marker=0xDE), jpeg((24, 40))),
        DeclaredImage(BIG, BIG, 1, 8),
    ),
    # fill bytes before a marker (§B.1.1.2), and junk both decoders skip to the next 0xFF
    "jpeg-fill-bytes": (lambda: behind(b"\xff\xff\xff", forged_jpeg()), HUGE_RGB),
    "jpeg-junk": (lambda: behind(b"junk", forged_jpeg()), HUGE_RGB),
    # libjpeg stops at the first frame header, Pillow reads on to the last
    "jpeg-second-frame-header": (lambda: behind(sof(24, 40, 3), forged_jpeg()), HUGE_RGB),
    # past EOI: libjpeg fails, Pillow reads on
    "jpeg-after-eoi": (lambda: behind(b"\xff\xd9", forged_jpeg()), HUGE_RGB),
    # JPG (C8): libjpeg skips it by its length, Pillow looks for the next 0xFF in it
    "jpeg-inside-jpg-segment": (hidden_frame_header, HUGE_RGB),
    "jpeg-after-jpg-segment": (lambda: behind(jpg_segment(b"\xff\xda"), forged_jpeg()), HUGE_RGB),
}


@pytest.mark.parametrize(("make", "image"), FORGED.values(), ids=FORGED.keys())
def test_a_forged_header_is_read_as_it_declares(
    make: Callable[[], bytes], image: DeclaredImage
) -> None:
    frame = make()
    assert declared_image(frame) == image
    assert declared_bytes(frame) == image.decoded_bytes()


# 3. No header: nothing is declared, and the decoders refuse the frame


def cut(make: Callable[[], bytes], marker: bytes, keep: int) -> Callable[[], bytes]:
    """``make``'s stream cut ``keep`` bytes after ``marker``."""

    def made() -> bytes:
        data = make()
        return data[: data.index(marker) + keep]

    return made


RLE_HEADER = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x81\x00" * 64
NOTHING: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "soi-only": lambda: b"\xff\xd8",
    "garbage": lambda: b"this is not a codestream at all",
    "rle-frame": lambda: RLE_HEADER,
    "jpeg-scan-before-frame": lambda: behind(b"\xff\xda\x00\x02", jpeg((24, 40))),
    "jpeg-frame-header-cut": cut(lambda: jpeg((24, 40)), b"\xff\xc0", 7),
    "jpeg-segment-past-the-end": lambda: b"\xff\xd8\xff\xe0\xff\xff" + bytes(100),
    "jpeg-without-soi": lambda: jpeg((24, 40))[2:],
    "j2k-siz-cut": lambda: j2k((64, 64))[:30],
    "j2k-components-cut": lambda: j2k((64, 64, 3))[:44],
    "j2k-no-components": lambda: patched(j2k((64, 64)), 40, ">H", 0),
    "j2k-soc-without-siz": lambda: b"\xff\x4f\xff\x52" + j2k((64, 64))[4:],
    "jp2-without-codestream-or-header": lambda: j2k((64, 96), codec_format=1)[:32],
    "jp2-box-shorter-than-its-header": lambda: (
        j2k((64, 96), codec_format=1)[:12] + b"\x00\x00\x00\x04jp2h"
    ),
}


@pytest.mark.parametrize("make", NOTHING.values(), ids=NOTHING.keys())
def test_no_header_declares_nothing(make: Callable[[], bytes]) -> None:
    assert declared_image(make()) is None and declared_bytes(make()) is None


def test_a_jp2_codestream_box_running_past_the_end_still_counts() -> None:
    data = forged_jp2(siz=(BIG, BIG))
    at = data.index(b"jp2c") - 4
    longer = patched(data, at, ">I", 2**31)
    assert declared_image(longer) == DeclaredImage(BIG, BIG, 1, 1)


# 4. A header too long to walk is refused, not walked


def test_a_jpeg_header_of_endless_segments_is_refused() -> None:
    comments = b"\xff\xfe\x00\x02" * MAX_SEGMENTS
    with pytest.raises(CodestreamError, match="4096"):
        declared_image(behind(comments, forged_jpeg()))
    # ... while a header of many segments, though fewer, is read to its frame header
    fewer = b"\xff\xfe\x00\x02" * (MAX_SEGMENTS - 10)
    assert declared_image(behind(fewer, forged_jpeg())) == HUGE_RGB


def test_a_height_left_to_a_dnl_segment_is_refused() -> None:
    """libjpeg decodes lines until memory runs out when no DNL segment comes (T.81
    §B.2.5), whatever the width: no size bounds it."""
    with pytest.raises(CodestreamError, match="height 0"):
        declared_image(with_dnl_height())
    # ... unless a JPEG-LS oversize segment gives it (T.87 §C.2.4.1.4)
    assert declared_image(oversize_jpeg_ls()) == DeclaredImage(100_000, 70_000, 1, 16)


def test_a_jp2_file_of_endless_boxes_is_refused() -> None:
    data = j2k((64, 96), codec_format=1)
    free = b"\x00\x00\x00\x08free" * MAX_SEGMENTS
    with pytest.raises(CodestreamError, match="4096"):
        declared_image(data[:12] + free + data[12:])
