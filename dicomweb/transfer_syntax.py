"""Transfer syntaxes: what radhub stores and what it serves.

The table is data (PS3.5 §10 and Annex A; PS3.6 Table A-1 for the UIDs;
PS3.18 Table 8.7.3-5 for the media types of compressed bulk data). Over the
web radhub never sends Implicit VR Little Endian nor Explicit VR Big Endian
(PS3.18 §8.7.3): the default transfer syntax of ``application/dicom`` is
Explicit VR Little Endian (PS3.18 §8.7.3.4), ``transfer-syntax=*`` returns
the stored file, and both are rewritten as Explicit VR Little Endian.
Pixel data stored lossy compressed may be sent as stored when no transfer
syntax was asked for (PS3.18 §8.7.3.4, note 2): that is what a server with
no decoder for it has. Media types and the ``type`` parameter are matched
without regard to case (RFC 9110 §8.3.1).

This module decides what may be sent; ``pixel_codec`` makes it. A decoder
being installed (``can_decode``) does not mean it can decode a given file:
the codec's ``TranscodeError`` says so at decoding time, and callers fall
back to another acceptable form.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
# PS3.18 §8.7.3: "shall not be used with Web Services"
NOT_FOR_WEB = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})
OCTET_STREAM = "application/octet-stream"
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class TransferSyntax:
    """One row of the table: UID, name, how its pixel data is encoded, and the
    media type of its compressed bulk data (PS3.18 Table 8.7.3-5)."""

    uid: str
    name: str
    encapsulated: bool
    lossy: bool = False
    media: str | None = None

    @property
    def video(self) -> bool:
        """One stream for all frames (MPEG-2, H.264, HEVC): it has no separate frames."""
        return self.media is not None and self.media.startswith("video/")


# PS3.6 Table A-1 (Transfer Syntax rows); radhub stores any of these as received.
TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", False),
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", False),
    TransferSyntax("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR LE", True),
    TransferSyntax(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", False),
    TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian (retired)", False),
    TransferSyntax("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", True, True, "image/jpeg"),
    TransferSyntax("1.2.840.10008.1.2.4.51", "JPEG Extended (2 & 4)", True, True, "image/jpeg"),
    TransferSyntax(
        "1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)", True, False, "image/jpeg"
    ),
    TransferSyntax("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", True, False, "image/jpeg"),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", True, False, "image/jls"),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", True, True, "image/jls"),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", True, False, "image/jp2"),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000", True, True, "image/jp2"),
    TransferSyntax("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Lossless", True, False, "image/jpx"),
    TransferSyntax("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2", True, True, "image/jpx"),
    TransferSyntax("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", True, False, "image/jphc"),
    TransferSyntax("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", True, False, "image/jphc"),
    TransferSyntax("1.2.840.10008.1.2.4.203", "HTJ2K", True, True, "image/jphc"),
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", True, False, "image/dicom-rle"),
    TransferSyntax("1.2.840.10008.1.2.4.100", "MPEG2 MP@ML", True, True, "video/mpeg"),
    TransferSyntax("1.2.840.10008.1.2.4.101", "MPEG2 MP@HL", True, True, "video/mpeg"),
    TransferSyntax("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 HP@L4.1", True, True, "video/mp4"),
    TransferSyntax("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD", True, True, "video/mp4"),
    TransferSyntax("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile", True, True, "video/H265"),
)

_BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TRANSFER_SYNTAXES}


class NotAcceptable(Exception):
    """No media range in the Accept header can be served (HTTP 406)."""


def lookup(uid: str) -> TransferSyntax | None:
    """Return the table row for ``uid``, or None if radhub does not know it (PS3.5 §10)."""
    return _BY_UID.get(uid)


def is_accepted(uid: str) -> bool:
    """True if STOW-RS may store an instance in this transfer syntax (PS3.18 §10.5)."""
    return uid in _BY_UID


def can_decode(uid: str) -> bool:
    """True if this machine has a pixel decoder for ``uid`` (pydicom / pylibjpeg);
    a given file may still fail to decode (``TranscodeError``)."""
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
    kept = [r for r in weighted_values(header) if r.q > 0]
    return tuple(sorted(kept, key=lambda r: -r.q))


def weighted_values(header: str) -> tuple[MediaRange, ...]:
    """Every well-formed entry of a header of weighted values (Accept,
    Accept-Encoding: RFC 9110 §12.4.2), in order, those with q=0 too."""
    ranges = (_parse_range(part) for part in _split_outside_quotes(header, ","))
    return tuple(r for r in ranges if r is not None)


def _ranges(accept: str | None) -> tuple[MediaRange, ...]:
    """An absent Accept header accepts everything (RFC 9110 §12.5.1)."""
    return parse_accept(accept) if accept and accept.strip() else parse_accept("*/*")


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
            # multipart/related's type names a media type: case-insensitive like one
            params.append((name, value.lower() if name == "type" else value))
    return MediaRange(head.strip().lower(), tuple(params), q)


def _matches(media_range: str, media_type: str) -> bool:
    """Whether a (lower-case) media range covers ``media_type`` (RFC 9110 §12.5.1)."""
    wanted = media_type.lower()
    if media_range in ("*/*", wanted):
        return True
    return media_range.endswith("/*") and wanted.startswith(media_range[:-1])


_MULTIPART = ("multipart/related", "multipart/*")


def prefers_single_part(accept: str | None) -> bool:
    """Whether the best media range that names a DICOM file is single-part
    ``application/dicom``: a client that asked only for the bare file (PS3.18
    §8.7.3.3.1) cannot read a multipart body. ``*/*`` and multipart ranges keep the
    multipart default that DICOMweb clients expect."""
    for media in _ranges(accept):
        if media.media_type == "application/dicom":
            return True
        if media.media_type == "*/*" or (
            media.media_type in _MULTIPART and _names_dicom(media, multi=True)
        ):
            return False
    return False


def acceptable_syntaxes(
    accept: str | None, stored_uid: str, *, multi: bool = False
) -> tuple[str, ...]:
    """Every transfer syntax radhub can send a stored instance in that ``accept``
    admits, best first (PS3.18 §8.7.8.2). ``multi``: the resource holds several
    instances, so single-part media types do not count (PS3.18 §8.7.5)."""
    found: list[str] = []
    for media in _ranges(accept):
        if _names_dicom(media, multi):
            found += [
                u for u in _choices(media.param("transfer-syntax"), stored_uid) if u not in found
            ]
    return tuple(found)


def negotiate(accept: str | None, stored_uid: str, *, multi: bool = False) -> str:
    """Choose the transfer syntax to serve a stored instance in (PS3.18 §8.7.3.5).

    Raises NotAcceptable when no acceptable media range can be served.
    """
    served = acceptable_syntaxes(accept, stored_uid, multi=multi)
    if not served:
        raise NotAcceptable(f"cannot serve transfer syntax {stored_uid} for Accept: {accept}")
    return served[0]


def _names_dicom(media: MediaRange, multi: bool) -> bool:
    if media.media_type in _MULTIPART:
        return _matches(media.param("type") or "application/dicom", "application/dicom")
    return media.media_type == "*/*" if multi else _matches(media.media_type, "application/dicom")


def _choices(requested: str | None, stored_uid: str) -> tuple[str, ...]:
    explicit = _can_make_explicit_le(stored_uid)
    if requested == "*":
        return (EXPLICIT_VR_LITTLE_ENDIAN,) if stored_uid in NOT_FOR_WEB else (stored_uid,)
    if requested is None:  # the default, or the lossy form as stored (PS3.18 §8.7.3.4)
        row = _BY_UID.get(stored_uid)
        lossy = (stored_uid,) if row is not None and row.lossy else ()
        return ((EXPLICIT_VR_LITTLE_ENDIAN,) if explicit else ()) + lossy
    if requested in NOT_FOR_WEB:
        return ()
    if requested == stored_uid or (requested == EXPLICIT_VR_LITTLE_ENDIAN and explicit):
        return (requested,)
    return ()


def _can_make_explicit_le(stored_uid: str) -> bool:
    return stored_uid == EXPLICIT_VR_LITTLE_ENDIAN or can_decode(stored_uid)


@dataclass(frozen=True)
class PixelForm:
    """A form pixel data is sent in, by frames or as bulk data: a media type and
    a transfer syntax (PS3.18 §8.7.3.3)."""

    media_type: str
    transfer_syntax: str

    @property
    def native(self) -> bool:
        """Uncompressed little endian bytes (PS3.18 §8.7.3.3.1)."""
        return self.media_type == OCTET_STREAM

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def pixel_forms(accept: str | None, stored_uid: str) -> tuple[PixelForm, ...]:
    """The forms ``accept`` admits for an instance's pixel data, best first: native
    (decoded if need be), or compressed as stored (PS3.18 §8.7.3.3). Empty when
    none can be served (406)."""
    row = _BY_UID.get(stored_uid)
    native = PixelForm(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
    can_native = _can_make_explicit_le(stored_uid)
    stored = PixelForm(row.media, stored_uid) if row and row.encapsulated and row.media else None
    found: list[PixelForm] = []
    for media in _ranges(accept):
        inner = (media.param("type") or OCTET_STREAM) if media.media_type in _MULTIPART else None
        inner, ts = inner or media.media_type, media.param("transfer-syntax")
        if (
            can_native
            and _matches(inner, OCTET_STREAM)
            and ts in (None, "*", native.transfer_syntax)
        ):
            found.append(native)
        if stored is not None and row is not None and _admits_stored(inner, ts, stored, row.lossy):
            found.append(stored)
    return tuple(dict.fromkeys(found))


def _admits_stored(inner: str, ts: str | None, stored: PixelForm, lossy: bool) -> bool:
    """Whether a range admits compressed data as stored: under its own media type (or
    a range over it), or as octets asked for in its transfer syntax or ``*``, or as
    octets with no transfer syntax when lossy (PS3.18 §8.7.3.3: lossy data may go as
    received)."""
    if _matches(inner, stored.media_type):
        return ts in (None, "*", stored.transfer_syntax)
    if _matches(inner, OCTET_STREAM):
        return ts in ("*", stored.transfer_syntax) or (ts is None and lossy)
    return False
