"""Transfer syntaxes: what radhub stores, what it serves, and transcoding.

The table is data (PS3.5 §10 and Annex A; PS3.6 Table A-1 for the UIDs).
Over the web radhub never sends Implicit VR Little Endian: the default
transfer syntax of ``application/dicom`` is Explicit VR Little Endian
(PS3.18 §8.7.3.5.2), and ``transfer-syntax=*`` returns the stored file
unless it is Implicit VR Little Endian, which is rewritten as explicit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class TransferSyntax:
    """One row of the table: UID, name, and how its pixel data is encoded."""

    uid: str
    name: str
    encapsulated: bool
    lossy: bool = False


# PS3.6 Table A-1 (Transfer Syntax rows); radhub stores any of these as received.
TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", False),
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", False),
    TransferSyntax("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR LE", True),
    TransferSyntax(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", False),
    TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian (retired)", False),
    TransferSyntax("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)", True),
    TransferSyntax("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", True),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", True),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", True),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Lossless", True),
    TransferSyntax("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", True),
    TransferSyntax("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", True),
    TransferSyntax("1.2.840.10008.1.2.4.203", "HTJ2K", True, True),
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", True),
    TransferSyntax("1.2.840.10008.1.2.4.100", "MPEG2 MP@ML", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.101", "MPEG2 MP@HL", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 HP@L4.1", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile", True, True),
)

_BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TRANSFER_SYNTAXES}


class NotAcceptable(Exception):
    """No media range in the Accept header can be served (HTTP 406)."""


class TranscodeError(Exception):
    """The pixel data cannot be decoded, so the instance cannot be transcoded."""


def lookup(uid: str) -> TransferSyntax | None:
    """Return the table row for ``uid``, or None if radhub does not know it (PS3.5 §10)."""
    return _BY_UID.get(uid)


def is_accepted(uid: str) -> bool:
    """True if STOW-RS may store an instance in this transfer syntax (PS3.18 §10.5)."""
    return uid in _BY_UID


def can_decode(uid: str) -> bool:
    """True if this machine has a pixel decoder for ``uid`` (pydicom / pylibjpeg)."""
    row = _BY_UID.get(uid)
    if row is None:
        return False
    if not row.encapsulated:
        return True
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except NotImplementedError:
        return False


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: type, parameters and quality (RFC 9110 §12.5.1)."""

    media_type: str
    params: tuple[tuple[str, str], ...]
    q: float

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (lower-case), or None."""
        return next((v for k, v in self.params if k == name), None)


def parse_accept(header: str) -> tuple[MediaRange, ...]:
    """Parse an Accept header into media ranges, best first (PS3.18 §8.7.2)."""
    ranges = [_parse_range(part) for part in _split_outside_quotes(header, ",")]
    kept = [r for r in ranges if r is not None and r.q > 0]
    return tuple(sorted(kept, key=lambda r: -r.q))


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _parse_range(text: str) -> MediaRange | None:
    head, *raw_params = _split_outside_quotes(text, ";")
    params: list[tuple[str, str]] = []
    q = 1.0
    for raw in raw_params:
        name, _, value = raw.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                return None
        else:
            params.append((name, value))
    return MediaRange(head.strip().lower(), tuple(params), q)


_DICOM_RANGES = frozenset({"application/dicom", "*/*", "application/*"})


def negotiate(accept: str | None, stored_uid: str) -> str:
    """Choose the transfer syntax to serve a stored instance in (PS3.18 §8.7.3.5).

    Raises NotAcceptable when no acceptable media range can be served.
    """
    ranges = parse_accept(accept) if accept and accept.strip() else parse_accept("*/*")
    for media in ranges:
        if not _names_dicom(media):
            continue
        chosen = _choose(media.param("transfer-syntax"), stored_uid)
        if chosen is not None:
            return chosen
    raise NotAcceptable(f"cannot serve transfer syntax {stored_uid} for Accept: {accept}")


def _names_dicom(media: MediaRange) -> bool:
    if media.media_type == "multipart/related":
        return (media.param("type") or "application/dicom") == "application/dicom"
    return media.media_type in _DICOM_RANGES


def _choose(requested: str | None, stored_uid: str) -> str | None:
    if requested == "*":
        return EXPLICIT_VR_LITTLE_ENDIAN if stored_uid == IMPLICIT_VR_LITTLE_ENDIAN else stored_uid
    wanted = requested or EXPLICIT_VR_LITTLE_ENDIAN
    if wanted == IMPLICIT_VR_LITTLE_ENDIAN:
        return None
    if wanted == stored_uid:
        return wanted
    if wanted == EXPLICIT_VR_LITTLE_ENDIAN and can_decode(stored_uid):
        return wanted
    return None


def transcode_to_explicit_le(source: Path | bytes) -> bytes:
    """Rewrite a Part-10 instance as Explicit VR Little Endian (PS3.18 §8.7.3.5.2).

    Decodes compressed pixel data; raises TranscodeError if it cannot.
    """
    ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    uid = str(ds.file_meta.TransferSyntaxUID)
    if not can_decode(uid):
        raise TranscodeError(f"no decoder for transfer syntax {uid}")
    try:
        _to_explicit_le(ds, uid)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise TranscodeError(f"cannot decode pixel data: {exc}") from exc
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _to_explicit_le(ds: Dataset, uid: str) -> None:
    row = _BY_UID[uid]
    if row.encapsulated:
        ds.decompress(generate_instance_uid=False)  # same instance, another encoding
    elif uid == EXPLICIT_VR_BIG_ENDIAN and "PixelData" in ds:
        array = ds.pixel_array
        ds.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
        if int(ds.get("SamplesPerPixel", 1)) > 1:
            ds.PlanarConfiguration = 0  # pixel_array is always colour-by-pixel
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
