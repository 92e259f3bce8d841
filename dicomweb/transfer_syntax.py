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

from collections.abc import Mapping, Sequence
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
    """The acceptable (q > 0) media ranges of an Accept header, best first (PS3.18
    §8.7.2). The q=0 ranges are left out here, but they still exclude what they
    name from the wider ranges kept: ask ``acceptable`` about a representation."""
    kept = [r for r in weighted_values(header) if r.q > 0]
    return tuple(sorted(kept, key=lambda r: -r.q))


def acceptable(
    ranges: Sequence[MediaRange], media_type: str, params: Mapping[str, str] | None = None
) -> float:
    """The quality ``ranges`` (every entry, q=0 ones too: ``weighted_values``) give a
    representation of ``media_type`` with ``params``: that of the most specific range
    covering it, 0 when none does. A more specific range overrides a wider one
    (RFC 9110 §12.5.1), so ``application/dicom+json;q=0, */*;q=0.1`` excludes JSON."""
    best = _most_specific(ranges, media_type, params or {})
    return best.q if best is not None else 0.0


def _excluded(ranges: Sequence[MediaRange], media_type: str, params: Mapping[str, str]) -> bool:
    """Whether the most specific range covering the representation has q=0; one that no
    range names is not excluded (it was admitted by the caller's own rules)."""
    best = _most_specific(ranges, media_type, params)
    return best is not None and best.q <= 0


def _most_specific(
    ranges: Sequence[MediaRange], media_type: str, params: Mapping[str, str]
) -> MediaRange | None:
    best: tuple[tuple[int, int, int], MediaRange] | None = None
    for media in ranges:
        rank = _specificity(media, media_type, params)
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, media)
    return best[1] if best is not None else None


def _specificity(
    media: MediaRange, media_type: str, params: Mapping[str, str]
) -> tuple[int, int, int] | None:
    """How specifically ``media`` covers the representation (None: not at all): a
    full type before ``type/*`` before ``*/*``, then by parameters matched exactly; a
    wildcard value (``transfer-syntax=*``, ``type=image/*``) matches but counts less."""
    if not _matches(media.media_type, media_type):
        return None
    exact = 0
    for name, value in media.params:
        have = params.get(name)
        if have is None:
            return None
        if value == have or (name == "type" and value == have.lower()):
            exact += 1
        elif not (value == "*" or (name == "type" and _matches(value, have))):
            return None
    level = 0 if media.media_type == "*/*" else 1 if media.media_type.endswith("/*") else 2
    return level, exact, len(media.params)


def weighted_values(header: str) -> tuple[MediaRange, ...]:
    """Every well-formed entry of a header of weighted values (Accept,
    Accept-Encoding: RFC 9110 §12.4.2), in order, those with q=0 too."""
    ranges = (_parse_range(part) for part in _split_outside_quotes(header, ","))
    return tuple(r for r in ranges if r is not None)


def _ranges(accept: str | None) -> tuple[MediaRange, ...]:
    """An absent Accept header accepts everything (RFC 9110 §12.5.1)."""
    return parse_accept(accept) if accept and accept.strip() else parse_accept("*/*")


def _every_range(accept: str | None) -> tuple[MediaRange, ...]:
    """Every entry, the q=0 ones too, for ``_excluded``."""
    return weighted_values(accept) if accept else ()


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
    pieces = _split_outside_quotes(text, ";")
    if not pieces:  # ``;`` alone: no value at all
        return None
    head, *raw_params = pieces
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
    every = _every_range(accept)
    for media in _ranges(accept):
        if _names_dicom(media, multi):
            for uid in _choices(media.param("transfer-syntax"), stored_uid):
                sent = _representation(media, "application/dicom", uid)
                if uid not in found and not _excluded(every, *sent):
                    found.append(uid)
    return tuple(found)


def _is_multipart(media: MediaRange) -> bool:
    """Whether what a range admits is sent multipart: a multipart range, or ``*/*``
    (multipart being the DICOMweb default)."""
    return media.media_type in _MULTIPART or media.media_type == "*/*"


def _representation(
    media: MediaRange, media_type: str, transfer_syntax: str
) -> tuple[str, dict[str, str]]:
    """What is sent for what ``media`` admitted: a ``multipart/related`` body of
    ``media_type`` parts, or one bare part; for ``_excluded``."""
    if _is_multipart(media):
        return "multipart/related", {"type": media_type, "transfer-syntax": transfer_syntax}
    return media_type, {"transfer-syntax": transfer_syntax}


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


@dataclass(frozen=True)
class PixelChoice:
    """A form ``accept`` admits, and whether a single-part range admitted it: then it
    may go as a bare body, when it is one item (PS3.18 Table 10.4.4-1, note 3)."""

    form: PixelForm
    single: bool


def pixel_forms(accept: str | None, stored_uid: str) -> tuple[PixelForm, ...]:
    """The forms ``accept`` admits for an instance's pixel data, best first: native
    (decoded if need be), or compressed as stored (PS3.18 §8.7.3.3). Empty when
    none can be served (406)."""
    return tuple(dict.fromkeys(c.form for c in pixel_choices(accept, stored_uid)))


def pixel_choices(accept: str | None, stored_uid: str) -> tuple[PixelChoice, ...]:
    """``pixel_forms``, each as often as a single-part and a multipart range admit
    it, best first, less those a more specific q=0 range excludes."""
    row = _BY_UID.get(stored_uid)
    native = PixelForm(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
    can_native = _can_make_explicit_le(stored_uid)
    stored = PixelForm(row.media, stored_uid) if row and row.encapsulated and row.media else None
    every = _every_range(accept)
    found: list[PixelChoice] = []
    for media in _ranges(accept):
        inner = (media.param("type") or OCTET_STREAM) if media.media_type in _MULTIPART else None
        inner, ts = inner or media.media_type, media.param("transfer-syntax")
        forms: list[PixelForm] = []
        if (
            can_native
            and _matches(inner, OCTET_STREAM)
            and ts in (None, "*", native.transfer_syntax)
        ):
            forms.append(native)
        if stored is not None and row is not None and _admits_stored(inner, ts, stored, row.lossy):
            forms.append(stored)
        for form in forms:
            # compressed data asked for as octets in its transfer syntax: named both ways
            named: tuple[str, ...] = (form.media_type,)
            if not _matches(inner, form.media_type):
                named += (OCTET_STREAM,)
            sent = (_representation(media, m, form.transfer_syntax) for m in named)
            if not any(_excluded(every, *rep) for rep in sent):
                found.append(PixelChoice(form, not _is_multipart(media)))
    return tuple(dict.fromkeys(found))


def prefers_bulkdata(accept: str | None) -> bool:
    """Whether a study, series or instance is asked for as its bulk data (PS3.18
    Table 10.4.4-1: ``multipart/related; type="application/octet-stream"`` or a
    pixel data media type) rather than as instances: the best multipart range (or
    ``*/*``, which means instances) decides."""
    for media in _ranges(accept):
        if _is_multipart(media):
            inner = media.param("type") or "application/dicom"
            return media.media_type != "*/*" and not _matches(inner, "application/dicom")
    return False


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
