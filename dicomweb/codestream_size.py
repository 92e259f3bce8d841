"""The image a compressed frame's own codestream declares, read without decoding it.

The decoders of the JPEG family size their output from the codestream, not from
the data set's Rows and Columns: pylibjpeg-libjpeg allocates rows × columns ×
components × bytes per sample from the frame header (ITU-T T.81 §B.2.2; JPEG-LS
SOF55, T.87 §C.2.2), pylibjpeg-openjpeg from the SIZ marker (ISO/IEC 15444-1
§A.5.1, also HTJ2K's, 15444-15), and Pillow, pydicom's fallback, from either.
So a 16×16 instance whose codestream declares 60000×60000 would have them
allocate gigabytes; ``decode_limit`` judges each frame by what is read here.

What is read is what the decoders would read, or more: where libjpeg and
Pillow walk a JPEG header differently, every frame header either of them
reaches counts, and the largest wins. None means that no header was found; the
decoders refuse such a frame themselves. ``CodestreamError`` says that the size
cannot be known before decoding: a header still unread after ``MAX_SEGMENTS``
segments or boxes (walking it in Python would cost more than refusing it), or a
JPEG frame header of height 0, which leaves the height to a DNL segment after
the first scan (T.81 §B.2.5). Given one without that segment, libjpeg decodes
lines until memory runs out: 7.9 GB for an image 8 pixels wide, where an 8 GB
address space stopped it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SOI = b"\xff\xd8"  # T.81 Table B.1
SOC_SIZ = b"\xff\x4f\xff\x51"  # 15444-1 §A.4.1, §A.5.1: SIZ follows SOC directly
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # 15444-1 §I.5.1

# Markers after which a frame header (P, Y, X, Nf) follows its length: SOF0-SOF15
# less DHT (C4), JPG (C8) and DAC (CC), T.81 Table B.1; DHP, which declares a
# hierarchical image's whole size (§B.3.2); JPEG-LS SOF55 (T.87 §C.2.2); and the
# JPEG XT residual frames (ISO/IEC 18477-8) that libjpeg also takes a frame from.
FRAME_HEADERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
FRAME_HEADERS |= {0xDE, 0xF7, 0xB1, 0xB2, 0xB3, 0xB9, 0xBA, 0xBB}
# Segments both decoders skip by their length (T.81 §B.1.1.4): DHT, DAC, DQT, DNL,
# DRI, EXP, APP0-APP15, COM
LENGTH_SKIPPED = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xDF, 0xFE, *range(0xE0, 0xF0)})
# ... and those one skips by length while the other looks for the next 0xFF: JPG,
# LSE (T.87 §C.2.4.1), a stray SOI (libjpeg by length, Pillow not)
EITHER_WAY = frozenset({0xC8, 0xF8, 0xD8})
# Markers without a length (§B.1.1.3): RSTm, EOI (Pillow reads on past it), TEM
STANDALONE = frozenset({*range(0xD0, 0xD8), 0xD9, 0x01})
SOS, LSE, OVERSIZE = 0xDA, 0xF8, 4  # T.87 §C.2.4.1.4: LSE ID 4, oversize dimensions
# Legitimate headers have tens of segments; a frame of millions of tiny ones would
# take seconds to walk here
MAX_SEGMENTS = 4096


class CodestreamError(ValueError):
    """The header goes on too long to be judged; the frame is not decoded."""


@dataclass(frozen=True)
class DeclaredImage:
    """What a codestream's header says the decoded image is."""

    rows: int
    columns: int
    components: int
    precision: int  # bits of a sample, the largest of the components'

    def decoded_bytes(self) -> int:
        """Bytes the decoders produce for this image."""
        return self.rows * self.columns * self.components * sample_bytes(self.precision)


def sample_bytes(precision: int) -> int:
    """Bytes of one decoded sample of ``precision`` bits: whole bytes, at least one,
    and four for three (pylibjpeg-openjpeg has no 3-byte container)."""
    whole = max(1, -(-precision // 8))
    return 4 if whole == 3 else whole


def declared_image(frame: bytes) -> DeclaredImage | None:
    """The image a JPEG, JPEG-LS, JPEG 2000 or HTJ2K frame declares (a raw codestream
    or a JP2 file), None when it is none of those or its header cannot be read."""
    if frame.startswith(SOI):
        return jpeg_image(frame)
    if frame.startswith(SOC_SIZ):
        return siz_image(frame, 0)
    if frame.startswith(JP2_SIGNATURE):
        return jp2_image(frame)
    return None


def declared_bytes(frame: bytes) -> int | None:
    """Bytes decoding ``frame`` produces by its own header, None when not known."""
    image = declared_image(frame)
    return None if image is None else image.decoded_bytes()


def _largest(images: list[DeclaredImage]) -> DeclaredImage | None:
    return max(images, key=DeclaredImage.decoded_bytes, default=None)


# JPEG and JPEG-LS (T.81 Annex B, T.87 Annex C)


def jpeg_image(data: bytes) -> DeclaredImage | None:
    """The largest image a frame header reachable from SOI declares, before the
    first scan: libjpeg stops at the first frame header, Pillow reads on to the
    last; where they skip a segment differently, both ways are followed."""
    frames: list[tuple[int, int, int, int]] = []  # (Y, X, Nf, P)
    oversize: list[tuple[int, int]] = []  # JPEG-LS (Ye, Xe)
    todo, seen = [len(SOI)], set[int]()
    while todo:
        pos = todo.pop()
        if pos in seen or pos + 2 > len(data):
            continue
        if len(seen) == MAX_SEGMENTS:
            raise CodestreamError(f"no scan within {MAX_SEGMENTS} JPEG marker segments")
        seen.add(pos)
        todo += _jpeg_next(data, pos, frames, oversize)
    if not frames:
        return None
    tall = max((ye for ye, _ in oversize), default=0)
    wide = max((xe for _, xe in oversize), default=0)
    if any(max(y, tall) == 0 for y, _, _, _ in frames):
        raise CodestreamError("a JPEG frame header of height 0 (the height in a DNL segment)")
    return _largest([DeclaredImage(max(y, tall), max(x, wide), nf, p) for y, x, nf, p in frames])


def _jpeg_next(
    data: bytes,
    pos: int,
    frames: list[tuple[int, int, int, int]],
    oversize: list[tuple[int, int]],
) -> list[int]:
    """Where the walk goes on from ``pos``, recording what it passes."""
    if data[pos] != 0xFF:  # not a marker: both decoders look for the next 0xFF
        return _resync(data, pos + 1)
    marker = data[pos + 1]
    if marker == 0xFF:  # a fill byte before a marker (§B.1.1.2)
        return [pos + 1]
    if marker == SOS:
        return []
    if marker in STANDALONE:
        return [pos + 2]
    after = _after_segment(data, pos)
    if marker in FRAME_HEADERS:
        if len(data) >= pos + 10:
            p, y, x, nf = struct.unpack_from(">BHHB", data, pos + 4)
            frames.append((y, x, nf, p))
        return after + (_resync(data, pos + 2) if marker == 0xF7 else [])
    if marker == LSE:
        oversize += _oversize(data, pos)
    if marker in LENGTH_SKIPPED:
        return after
    if marker in EITHER_WAY:
        return after + _resync(data, pos + 2)
    return _resync(data, pos + 2)  # reserved: libjpeg resynchronises, Pillow gives up


def _after_segment(data: bytes, pos: int) -> list[int]:
    """The position after the segment at ``pos``: its length counts itself (§B.1.1.4);
    a shorter one is read as 2, as Pillow does."""
    if len(data) < pos + 4:
        return []
    (length,) = struct.unpack_from(">H", data, pos + 2)
    return [pos + 2 + max(length, 2)]


def _resync(data: bytes, start: int) -> list[int]:
    found = data.find(b"\xff", start)
    return [] if found < 0 else [found]


def _oversize(data: bytes, pos: int) -> list[tuple[int, int]]:
    """(Ye, Xe) of an LSE oversize image dimension segment (T.87 §C.2.4.1.4): ID 4,
    Wxy, then Ye and Xe of Wxy bytes each (CharLS reads it; libjpeg refuses it)."""
    if len(data) < pos + 6 or data[pos + 4] != OVERSIZE:
        return []
    width = data[pos + 5]
    if not 2 <= width <= 4 or len(data) < pos + 6 + 2 * width:
        return []
    ye = int.from_bytes(data[pos + 6 : pos + 6 + width], "big")
    xe = int.from_bytes(data[pos + 6 + width : pos + 6 + 2 * width], "big")
    return [(ye, xe)]


# JPEG 2000 and HTJ2K (ISO/IEC 15444-1 Annex A, Annex I; 15444-15)


def siz_image(data: bytes, start: int) -> DeclaredImage | None:
    """The image the SIZ segment after SOC at ``start`` declares (§A.5.1): Xsiz by
    Ysiz, not the extent less XOsiz and YOsiz, since pylibjpeg-openjpeg sizes its
    output to the reference grid's far corner; Csiz components, of the largest
    Ssiz precision (bits 0-6, less one)."""
    if not data.startswith(SOC_SIZ, start) or len(data) < start + 42:
        return None
    xsiz, ysiz = struct.unpack_from(">II", data, start + 8)
    (csiz,) = struct.unpack_from(">H", data, start + 40)
    if csiz == 0 or len(data) < start + 42 + 3 * csiz:
        return None
    ssiz = data[start + 42 : start + 42 + 3 * csiz : 3]
    return DeclaredImage(ysiz, xsiz, csiz, max(s & 0x7F for s in ssiz) + 1)


def jp2_image(data: bytes) -> DeclaredImage | None:
    """The larger of the images a JP2 (or JPH) file declares: its first top-level
    Contiguous Codestream box's SIZ (§I.5.4), which openjpeg decodes, and its Image
    Header box (§I.5.3.1), by which Pillow sizes the image it decodes into."""
    found: dict[bytes, DeclaredImage | None] = {}
    for box, start, end in _boxes(data, 0, len(data)):
        if box == b"jp2c" and box not in found:
            found[box] = siz_image(data, start)
        elif box == b"jp2h" and box not in found:
            found[box] = _image_header(data, start, end)
        if len(found) == 2:
            break
    return _largest([image for image in found.values() if image is not None])


def _image_header(data: bytes, start: int, end: int) -> DeclaredImage | None:
    """The ihdr box in a JP2 Header box: HEIGHT, WIDTH, NC, BPC (§I.5.3.1); a BPC of
    255 leaves the depths to a bpcc box, counted here as 38 bits, the most there are."""
    for box, at, stop in _boxes(data, start, end):
        if box == b"ihdr" and stop - at >= 11:
            height, width, nc, bpc = struct.unpack_from(">IIHB", data, at)
            return DeclaredImage(height, width, nc, 38 if bpc == 0xFF else (bpc & 0x7F) + 1)
    return None


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(TBox, content start, content end) of the boxes from ``start`` to ``end``
    (§I.4): LBox 1 means an XLBox follows, 0 that the box runs to the end."""
    pos, count = start, 0
    while pos + 8 <= end:
        if count == MAX_SEGMENTS:
            raise CodestreamError(f"no codestream within {MAX_SEGMENTS} JP2 boxes")
        count += 1
        length, box = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > end:
                break
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = end - pos
        if length < header:
            break
        yield box, pos + header, min(pos + length, end)
        pos += length
