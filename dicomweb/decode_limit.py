"""How much one decoding of pixel data may produce, decided before decoding.

A compressed frame's size says nothing of its decoded size: RLE (PS3.5 Annex
G) writes 128 equal bytes in two, so a 67 MB upload can declare a 65535² frame
of 16-bit samples, 8 GiB once decoded. What a decoder allocates follows the
image pixel attributes (PS3.3 §C.7.6.3): Rows × Columns × Samples per Pixel ×
the bytes of one sample (Bits Allocated, one byte at least: 1-bit pixels come
out a byte each), for each frame decoded. Every road that decodes (a rendered
frame, the frames of a frames request, a whole instance transcoded, Pixel
Data as bulk data) asks ``check_decode`` first and raises ``DecodeTooLarge``
rather than decode more than the limit. The JPEG family's decoders (JPEG,
JPEG-LS, JPEG 2000, HTJ2K) follow the image their codestream declares instead,
whatever Rows and Columns say, so those roads also ask ``check_codestreams``
of the very frames the decoder is about to be given (``codestream_size``).

The default, 256 MiB, holds the largest single images an archive keeps (a
scanned film of 8000×10000 RGB is 229 MiB, mammography 4000×5000 16-bit 38
MiB) and whole multi-frame instances up to 512 CT frames of 512² 16-bit; a
larger instance is still sent as stored, or frame by frame. A request's memory
is a small multiple of it (transcoding holds the decoded value and the written
file), so it is what one request costs at most, not the archive's largest image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from dicomweb.codestream_size import declared_bytes

DEFAULT_MAX_DECODED_BYTES = 256 * 2**20


class Attributes(Protocol):
    """What is read from a dataset: pydicom's ``Dataset.get`` by keyword."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


class DecodeTooLarge(Exception):
    """Decoding would produce more bytes than one decoding may."""

    def __init__(self, size: int, limit: int, what: str) -> None:
        self.size, self.limit = size, limit
        super().__init__(
            f"decoding {what} would produce {size:,} bytes, more than the {limit:,}"
            " this server decodes at once"
        )


def decoded_bytes(rows: int, columns: int, samples: int, bits: int, frames: int) -> int:
    """Bytes that decoding ``frames`` frames produces (PS3.3 §C.7.6.3): a sample
    takes whole bytes, a 1-bit pixel one byte."""
    return rows * columns * samples * max(1, -(-bits // 8)) * frames


def _whole(value: Any, default: int) -> int:
    # a missing or empty attribute: the decoder will refuse the file itself
    return default if value in (None, "") else int(value)


def frame_bytes(attrs: Attributes) -> int:
    """Decoded bytes of one frame from a dataset's Rows, Columns, SamplesPerPixel and
    BitsAllocated; ValueError or TypeError when one is not an integer."""
    return decoded_bytes(
        _whole(attrs.get("Rows"), 0),
        _whole(attrs.get("Columns"), 0),
        _whole(attrs.get("SamplesPerPixel"), 1),
        _whole(attrs.get("BitsAllocated"), 8),
        1,
    )


def frame_count(attrs: Attributes) -> int:
    """Number of Frames, 1 when absent (PS3.3 §C.7.6.6)."""
    return max(_whole(attrs.get("NumberOfFrames"), 1), 1)


def check_decode(attrs: Attributes, frames: int, limit: int, what: str) -> None:
    """Raise DecodeTooLarge when decoding ``frames`` frames of a dataset with these
    attributes would produce more than ``limit`` bytes."""
    size = frame_bytes(attrs) * frames
    if size > limit:
        raise DecodeTooLarge(size, limit, what)


def check_codestreams(frames: Iterable[bytes], limit: int, what: str) -> None:
    """Raise DecodeTooLarge when the images these compressed frames' own headers
    declare would together decode to more than ``limit`` bytes; a frame without a
    header the decoders know counts nothing (they refuse it). CodestreamError
    (a ValueError) when a header is too long to judge."""
    size = sum(declared_bytes(frame) or 0 for frame in frames)
    if size > limit:
        raise DecodeTooLarge(size, limit, what)
