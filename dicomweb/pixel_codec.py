"""Pixel data codec: decoding, byte order and transcoding of stored instances.

What ``transfer_syntax`` negotiates is made here, from the stored Part-10
file: the instance rewritten as Explicit VR Little Endian (PS3.18 §8.7.3.4),
frames or the whole Pixel Data value as uncompressed little endian bytes
(PS3.18 §8.7.3.3.1), or frames of encapsulated pixel data as stored
(PS3.18 §8.7.3.3.2). Big endian values are swapped by VR (PS3.5 §7.3), pixel
data by sample. Everything here reads files and decodes: callers on the event
loop run it in a thread.

A decoder being installed (``transfer_syntax.can_decode``) does not mean it
can decode a given file (a 12-bit JPEG, a damaged stream): ``TranscodeError``
says so at decoding time, and callers fall back to another acceptable form.
Nothing is decoded that would produce more than ``limit`` bytes
(``decode_limit``), judged from the image pixel attributes and from the frames'
own codestreams: ``DecodeTooLarge`` says so before, and callers fall back in the
same way.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.pixels.utils import iter_pixels, pixel_array
from pydicom.uid import UID

from dicomweb.decode_limit import check_codestreams, check_decode, frame_count
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    PIXEL_DATA,
    TRANSFER_SYNTAXES,
    TransferSyntax,
    can_decode,
)

# Bytes per value of the binary VRs whose byte order follows the transfer syntax (PS3.5 §7.3)
VALUE_WIDTHS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
# ... and of the numeric VRs, for values read as bytes (PS3.5 Table 6.2-1)
NUMBER_WIDTHS = {**VALUE_WIDTHS, "AT": 2, "US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4}
NUMBER_WIDTHS |= {"FD": 8, "SV": 8, "UV": 8}

# the table by UID, as transfer_syntax indexes it; an unknown UID is a KeyError,
# which the decoders below report as a TranscodeError
_BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TRANSFER_SYNTAXES}


class TranscodeError(Exception):
    """The pixel data cannot be decoded, so the instance cannot be transcoded."""


# What pydicom and its plugins raise on pixel data they cannot decode, or on the
# attributes that describe it being missing or wrong
_DECODING_ERRORS = (
    RuntimeError,
    ValueError,
    NotImplementedError,
    AttributeError,
    KeyError,
    TypeError,
)


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


def _frame_images(uid: str) -> bool:
    """True when each frame of ``uid`` is a codestream of its own (PS3.5 §8.2), whose
    header the decoder sizes its output from; a video is one stream, and undecoded."""
    row = _BY_UID.get(uid)
    return row is not None and row.encapsulated and not row.video


def _encoded_frames(ds: Dataset, indices: Sequence[int] | None) -> Iterator[bytes]:
    """The encapsulated frames at ``indices`` (0-based), or all of them, split as
    pydicom's decoder splits them (all: with any beyond Number of Frames, which it
    decodes too)."""
    count, offsets = frame_count(ds), _extended_offsets(ds)
    if indices is None:
        return generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets)
    return (
        get_frame(ds.PixelData, i, number_of_frames=count, extended_offsets=offsets)
        for i in indices
    )


def _check_frames(ds: Dataset, indices: Sequence[int] | None, limit: int, what: str) -> None:
    if _frame_images(str(ds.file_meta.TransferSyntaxUID)):
        check_codestreams(_encoded_frames(ds, indices), limit, what)


def check_stored_frame(source: BinaryIO, ds: Dataset, index: int, limit: int) -> None:
    """DecodeTooLarge when frame ``index`` (0-based) of an encapsulated file would
    decode to more than ``limit`` bytes by its own codestream; ``source`` is where
    ``dcmread(stop_before_pixels=True)`` leaves it, ``ds`` the header it read.
    Only that frame is read, as pydicom's decoder reads it; ValueError when it
    cannot be."""
    if _frame_images(str(ds.file_meta.get("TransferSyntaxUID", ""))):
        check_codestreams([_stored_frame(source, ds, index)], limit, "a frame")


def _stored_frame(source: BinaryIO, ds: Dataset, index: int) -> bytes:
    # encapsulated Pixel Data is explicit VR little endian, of undefined length (PS3.5 §A.4)
    header = source.read(12)
    if len(header) < 12 or struct.unpack("<HH4xI", header) != (0x7FE0, 0x0010, 0xFFFFFFFF):
        raise ValueError("no encapsulated Pixel Data after the header")
    count, offsets = frame_count(ds), _extended_offsets(ds)
    return get_frame(source, index, number_of_frames=count, extended_offsets=offsets)


def swap_bytes(data: bytes, width: int) -> bytes:
    """``data`` with the byte order of each ``width``-byte value reversed."""
    if width < 2:
        return data
    whole = len(data) - len(data) % width
    return np.frombuffer(data, f"u{width}", whole // width).byteswap().tobytes() + data[whole:]


def pixel_width(bits_allocated: int, vr: str | None) -> int:
    """Bytes swapped together in big endian pixel data: one sample, or one OW word."""
    return bits_allocated // 8 if bits_allocated >= 16 else (2 if vr == "OW" else 1)


def _pixel_width(ds: Dataset) -> int:
    return pixel_width(int(ds.get("BitsAllocated") or 8), ds["PixelData"].VR)


def transcode_to_explicit_le(source: Path | bytes, *, limit: int) -> bytes:
    """Rewrite a Part-10 instance as Explicit VR Little Endian (PS3.18 §8.7.3.4).

    Decodes compressed pixel data; raises TranscodeError if it cannot, and
    DecodeTooLarge if its frames would decode to more than ``limit`` bytes.
    """
    ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    uid = str(ds.file_meta.TransferSyntaxUID)
    if not can_decode(uid):
        raise TranscodeError(f"no decoder for transfer syntax {uid}")
    out = io.BytesIO()
    try:
        if _BY_UID[uid].encapsulated:
            check_decode(ds, frame_count(ds), limit, "the instance")
            _check_frames(ds, None, limit, "the instance")
        _to_explicit_le(ds, uid)
        dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except _DECODING_ERRORS as exc:
        raise TranscodeError(f"cannot decode pixel data: {exc}") from exc
    return out.getvalue()


def _to_explicit_le(ds: Dataset, uid: str) -> None:
    row = _BY_UID[uid]
    if row.encapsulated:
        ds.decompress(generate_instance_uid=False)  # same instance, another encoding
    elif uid == EXPLICIT_VR_BIG_ENDIAN:
        _swap_binary_values(ds)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)


def _swap_binary_values(ds: Dataset) -> None:
    """Big endian → little endian for the values pydicom keeps as bytes (it converts
    the others itself when writing): pixel data by sample (an icon's by its own
    Bits Allocated), the rest by VR. Other elements are left unconverted."""
    for tag in ds.keys():
        vr = ds.get_item(tag).VR
        if vr == "SQ":
            for item in ds[tag].value or ():
                _swap_binary_values(item)
        elif vr in VALUE_WIDTHS and isinstance(value := ds[tag].value, bytes):
            ds[tag].value = swap_bytes(
                value, _pixel_width(ds) if tag == PIXEL_DATA else VALUE_WIDTHS[vr]
            )


def native_frames(source: Path, indices: Sequence[int], *, limit: int) -> list[bytes]:
    """Frames (0-based) as uncompressed little endian bytes (PS3.18 §8.7.3.3.1),
    decoded if need be; raises TranscodeError when they cannot be, DecodeTooLarge
    when together they would be more than ``limit`` bytes."""
    try:
        ds = dcmread(source)
        check_decode(ds, len(indices), limit, f"{len(indices)} frames")
        _check_frames(ds, indices, limit, f"{len(indices)} frames")
        if int(ds.BitsAllocated) == 1:
            return [_bit_frame(ds, i) for i in indices]
        arrays = iter_pixels(ds, indices=indices, raw=True)
        return [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays]
    except _DECODING_ERRORS as exc:
        raise TranscodeError(f"cannot decode the pixel data: {exc}") from exc


def native_pixel_data(source: Path, *, limit: int) -> bytes:
    """The whole Pixel Data value as uncompressed little endian bytes, every frame
    (PS3.18 §8.7.3.3.1); raises TranscodeError when it cannot be decoded,
    DecodeTooLarge when decoded it would be more than ``limit`` bytes."""
    try:
        ds = dcmread(source)
        uid = str(ds.file_meta.TransferSyntaxUID)
        if not _BY_UID[uid].encapsulated:  # native: only the byte order may differ
            value = bytes(ds.PixelData)
            big = uid == EXPLICIT_VR_BIG_ENDIAN
            return swap_bytes(value, _pixel_width(ds)) if big else value
        check_decode(ds, frame_count(ds), limit, "the pixel data")
        _check_frames(ds, None, limit, "the pixel data")
        if int(ds.BitsAllocated) == 1:
            return b"".join(_bit_frame(ds, i) for i in range(int(ds.get("NumberOfFrames") or 1)))
        array = pixel_array(ds, raw=True)
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    except _DECODING_ERRORS as exc:
        raise TranscodeError(f"cannot decode the pixel data: {exc}") from exc


def _bit_frame(ds: Dataset, index: int) -> bytes:
    """One frame of 1-bit pixel data, packed (PS3.5 §8.1.1); frames need not start
    on a byte boundary, so it is cut from the unpacked bits and packed again."""
    uid = str(ds.file_meta.TransferSyntaxUID)
    if _BY_UID[uid].encapsulated:
        return np.packbits(pixel_array(ds, index=index, raw=True), bitorder="little").tobytes()
    value = bytes(ds.PixelData)
    if uid == EXPLICIT_VR_BIG_ENDIAN:
        value = swap_bytes(value, _pixel_width(ds))
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    bits = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little")
    if (index + 1) * size > len(bits):
        raise ValueError(f"frame {index + 1} is beyond the pixel data")
    return np.packbits(bits[index * size : (index + 1) * size], bitorder="little").tobytes()


def compressed_frames(source: Path, indices: Sequence[int]) -> list[bytes]:
    """Frames (0-based) of encapsulated pixel data as stored, without the item
    delimiters (PS3.18 §8.7.3.3.2); a video's one stream is its only frame. Only
    the header and the frames asked for are read (``_stored_frame``): a viewer asks
    for one frame of a multi-frame object of hundreds of megabytes at a time."""
    try:
        with source.open("rb") as file:
            ds = dcmread(file, stop_before_pixels=True)
            row = _BY_UID[str(ds.file_meta.TransferSyntaxUID)]
            if row.video:
                file.seek(0)
                value = dcmread(file).PixelData
                return [next(generate_frames(value, number_of_frames=1)) for _ in indices]
            pixel_data = file.tell()
            frames: list[bytes] = []
            for index in indices:
                file.seek(pixel_data)
                frames.append(_stored_frame(file, ds, index))
            return frames
    except (ValueError, KeyError, AttributeError, StopIteration) as exc:
        raise TranscodeError(f"cannot split the pixel data into frames: {exc}") from exc
