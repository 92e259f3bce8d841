"""Parse one received Part-10 instance for ingest, without loading its pixel data.

``parse_instance`` reads the header with pydicom (``stop_before_pixels``, large
values deferred), checks that the file is a complete Part-10 instance with the
identifying UIDs, and returns the ``InstanceHeader`` the index needs plus where
the pixel data sits in the file (for frame retrieval without re-parsing).

``scan_instance`` is the fast road for the common case (``header_scan``): the
same header and pixel location, and the DICOM JSON, without pydicom; None
when the file needs ``parse_instance``.

Failures raise ``InstanceRejected`` carrying a Failure Reason (0008,1197) code
from PS3.18 Table I.2-2 (``FAILURE_REASONS``), ready for the STOW-RS response.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue

from dicomweb import header_scan, transfer_syntax
from dicomweb.dicom_json import JsonDataset, raw_values, read_inline_values, text_codec
from dicomweb.header_scan import ITEM, LONG_VRS, PIXEL_TAGS, SEQUENCE_END, UNDEFINED

# Failure Reason values, PS3.18 Table I.2-2 "Store Instances Response Failure
# Reason Values" (2024c). 0x0111 is the PS3.7 Annex C "Duplicate SOP Instance"
# status, used as an additional code as the table allows.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_REASONS: dict[int, str] = {
    OUT_OF_RESOURCES: "Refused out of Resources",
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot understand",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Referenced Transfer Syntax not supported",
    PROCESSING_FAILURE: "Processing failure",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
    SOP_CLASS_NOT_SUPPORTED: "Referenced SOP Class not supported",
}

DEFAULT_DEFER_SIZE = 64 * 1024
# The most a deflated data set (PS3.5 §A.5) may inflate to. pydicom inflates one
# whole in memory, to read its header and again to decode its pixels, so a few
# megabytes that inflate a thousandfold would otherwise take gigabytes; real deflated
# objects (structured reports, the odd image) stay far below.
MAX_INFLATED_SIZE = 512 * 1024 * 1024
_INFLATE_STEP = 1 << 20
SCAN_FIRST = 64 * 1024  # bytes the fast road reads first
SCAN_MOST = 4 * 1024 * 1024  # and at most: a longer header (a large value) is pydicom's
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# zlib.error: a deflated data set that does not inflate (truncated, damaged)
_FOREIGN_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    struct.error,
    TypeError,
    KeyError,
    zlib.error,
)


class InstanceRejected(Exception):
    """The instance cannot be stored; ``reason`` is a PS3.18 Table I.2-2 code.
    Its SOP Class and Instance UIDs, when it could be read that far, go into
    the Failed SOP Sequence item (PS3.18 Table I.1-1: Type 1 there)."""

    def __init__(
        self,
        reason: int,
        message: str,
        sop_class_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid

    def __reduce__(
        self,
    ) -> tuple[type[InstanceRejected], tuple[int, str, str | None, str | None]]:
        # raised in a worker process, re-raised here: rebuilt with every argument
        return InstanceRejected, (self.reason, self.message, self.sop_class_uid, self.sop_uid)


@dataclass(frozen=True)
class PixelDataLocation:
    """Where the pixel data value starts in the file; ``length`` None = encapsulated;
    ``offset`` None = not readable in the file as stored (a deflated data set)."""

    tag: int
    vr: str | None
    offset: int | None
    length: int | None


# (field, keyword, kind) — the attributes the index keeps (PS3.18 §10.6.3.3 tables
# plus what ImagingStudy and WADO-RS need).
_TEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("specific_character_set", "SpecificCharacterSet"),
    ("patient_id", "PatientID"),
    ("issuer_of_patient_id", "IssuerOfPatientID"),
    ("patient_name", "PatientName"),
    ("patient_birth_date", "PatientBirthDate"),
    ("patient_sex", "PatientSex"),
    ("study_date", "StudyDate"),
    ("study_time", "StudyTime"),
    ("accession_number", "AccessionNumber"),
    ("referring_physician_name", "ReferringPhysicianName"),
    ("study_id", "StudyID"),
    ("study_description", "StudyDescription"),
    ("timezone_offset_from_utc", "TimezoneOffsetFromUTC"),
    ("modality", "Modality"),
    ("series_description", "SeriesDescription"),
    ("series_date", "SeriesDate"),
    ("series_time", "SeriesTime"),
    ("body_part_examined", "BodyPartExamined"),
    ("laterality", "Laterality"),
    ("performed_procedure_step_start_date", "PerformedProcedureStepStartDate"),
    ("performed_procedure_step_start_time", "PerformedProcedureStepStartTime"),
    ("content_date", "ContentDate"),
    ("content_time", "ContentTime"),
    ("photometric_interpretation", "PhotometricInterpretation"),
)
_INT_FIELDS: tuple[tuple[str, str], ...] = (
    ("series_number", "SeriesNumber"),
    ("instance_number", "InstanceNumber"),
    ("rows", "Rows"),
    ("columns", "Columns"),
    ("number_of_frames", "NumberOfFrames"),
    ("bits_allocated", "BitsAllocated"),
    ("samples_per_pixel", "SamplesPerPixel"),
)


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_TAGS: dict[str, int] = {
    keyword: int(tag_for_keyword(keyword) or 0)
    for keyword in (*(k for _, k in _TEXT_FIELDS + _INT_FIELDS), *_UID_KEYWORDS)
}
_TAG_VRS: dict[int, str] = {tag: dictionary_VR(tag) for tag in _TAGS.values()}


@dataclass(frozen=True)
class InstanceHeader:
    """What the DICOM index stores about one instance (strings as in the file)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    specific_character_set: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    referring_physician_name: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    timezone_offset_from_utc: str | None = None
    modality: str | None = None
    series_description: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    body_part_examined: str | None = None
    laterality: str | None = None
    performed_procedure_step_start_date: str | None = None
    performed_procedure_step_start_time: str | None = None
    content_date: str | None = None
    content_time: str | None = None
    photometric_interpretation: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    bits_allocated: int | None = None
    samples_per_pixel: int | None = None


@dataclass(frozen=True)
class ParsedInstance:
    """The result of parsing: index header, header dataset (no pixels), pixel location."""

    header: InstanceHeader
    dataset: Dataset
    pixel_data: PixelDataLocation | None
    size: int


def parse_instance(
    source: Path | bytes,
    *,
    sop_classes: Collection[str] | None = None,
    defer_size: int = DEFAULT_DEFER_SIZE,
) -> ParsedInstance:
    """Parse and validate one Part-10 instance for STOW-RS (PS3.18 §10.5; PS3.10 §7)."""
    with _opened(source) as fp:
        with _cannot_understand():
            size = fp.seek(0, io.SEEK_END)
            fp.seek(0)
            _check_inflated_size(fp, MAX_INFLATED_SIZE)
            ds = dcmread(fp, stop_before_pixels=True, defer_size=defer_size)
        with _identified(ds), _cannot_understand():
            ts = _transfer_syntax(ds)
            if ts == transfer_syntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                pixels = _inflated_pixel_data(ds)
            else:
                _check_complete(ds, size, fp.tell())
                pixels = _locate_pixel_data(fp, size, ts)
            read_inline_values(ds)
    if isinstance(ds, FileDataset):
        ds.buffer = None  # read from memory: do not keep the whole file (pixels) alive
    with _identified(ds):
        header = _header(_DatasetValues(ds, ts).of, ts)
        if pixels is None and header.rows is not None:
            raise InstanceRejected(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "image without pixel data")
        if sop_classes is not None and header.sop_class_uid not in sop_classes:
            raise InstanceRejected(SOP_CLASS_NOT_SUPPORTED, f"SOP Class {header.sop_class_uid}")
    return ParsedInstance(header, ds, pixels, size)


def _check_inflated_size(fp: BinaryIO, most: int) -> None:
    """Refuse a deflated data set that inflates beyond ``most`` bytes, found by
    inflating it in steps and counting, before pydicom inflates it whole; anything
    else (or a file meta pydicom will refuse itself) passes untouched."""
    start = fp.tell()
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:  # not Part-10 as expected: dcmread says why
        fp.seek(start)
        return
    try:
        if meta.get("TransferSyntaxUID") != transfer_syntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return
        inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        pending = fp.read(_INFLATE_STEP)
        while pending and inflated <= most:
            inflated += len(inflater.decompress(pending, _INFLATE_STEP))
            pending = inflater.unconsumed_tail or fp.read(_INFLATE_STEP)
        if inflated > most:
            raise InstanceRejected(
                CANNOT_UNDERSTAND,
                f"the deflated data set inflates beyond {most:,} bytes: more than this"
                " archive takes",
            )
    finally:
        fp.seek(start)


def _inflated_pixel_data(ds: Dataset) -> PixelDataLocation | None:
    """A deflated data set's pixel data (PS3.5 §A.5), found and checked in the data set
    pydicom inflated in memory (its ``buffer``, read up to the pixel data), as the
    whole data set's completeness is. Offsets there are not offsets in the stored
    file, so the location keeps none: such pixel data is only ever decoded."""
    inflated = ds.buffer if isinstance(ds, FileDataset) else None
    if not isinstance(inflated, DicomBytesIO):
        raise InstanceRejected(CANNOT_UNDERSTAND, "the deflated data set could not be inflated")
    stop = inflated.tell()
    size = inflated.seek(0, io.SEEK_END)
    inflated.seek(stop)
    _check_complete(ds, size, stop)
    explicit_le = transfer_syntax.EXPLICIT_VR_LITTLE_ENDIAN
    found = _locate_pixel_data(cast(BinaryIO, inflated), size, explicit_le)
    return None if found is None else replace(found, offset=None)


@contextmanager
def _identified(ds: Dataset) -> Iterator[None]:
    """A rejection of a data set that could be read names its SOP Class and
    Instance UIDs, when they are valid UIDs (not re-read on the road that stores)."""
    try:
        yield
    except InstanceRejected as exc:
        if exc.sop_class_uid is None and exc.sop_uid is None:
            exc.sop_class_uid = _valid_uid(ds, "SOPClassUID")
            exc.sop_uid = _valid_uid(ds, "SOPInstanceUID")
        raise


def _valid_uid(ds: Dataset, keyword: str) -> str | None:
    try:
        value = str(ds.get(keyword) or "").strip()
    except Exception:  # a damaged element: the rejection stands without it
        return None
    return value if 0 < len(value) <= 64 and _UID_RE.fullmatch(value) else None


@dataclass(frozen=True)
class ScannedInstance:
    """The fast road's result: index header, the data set's DICOM JSON (without
    pixel data; the ``bulk`` elements still lack their URIs), pixel location."""

    header: InstanceHeader
    elements: JsonDataset
    bulk: list[tuple[JsonDataset, header_scan.TagPath]]
    pixel_data: PixelDataLocation | None
    size: int


def scan_instance(
    source: Path | bytes, *, defer_size: int = DEFAULT_DEFER_SIZE
) -> ScannedInstance | None:
    """``parse_instance``'s result for the common case, read without pydicom
    (``header_scan``); None when the file needs ``parse_instance``, which then
    also gives any rejection with its reason."""
    with _opened(source) as fp:
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        data = fp.read(SCAN_FIRST)
        try:
            found = header_scan.scan(data, size, _TAG_VRS, defer_size=defer_size)
        except header_scan.NeedMore:
            fp.seek(0)
            try:
                found = header_scan.scan(fp.read(SCAN_MOST), size, _TAG_VRS, defer_size=defer_size)
            except header_scan.NeedMore:
                return None  # pydicom skips such a value without holding it in memory
        if found is None:
            return None
        ts = found.transfer_syntax_uid
        try:
            header = _header(lambda tag: found.values.get(tag, []), ts)
            fp.seek(found.stop)
            pixels = _locate_pixel_data(fp, size, ts)
        except InstanceRejected:
            return None
    if pixels is None and header.rows is not None:
        return None
    return ScannedInstance(header, found.elements, found.bulk, pixels, size)


@contextmanager
def _opened(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
        return
    with source.open("rb") as fh:
        yield fh


@contextmanager
def _cannot_understand() -> Iterator[None]:
    """Translate pydicom's parse failures into a 0xC000 rejection."""
    try:
        yield
    except InstanceRejected:
        raise
    except InvalidDicomError as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"not a DICOM Part-10 file: {exc}") from exc
    except _FOREIGN_ERRORS as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"cannot parse instance: {exc}") from exc


def _transfer_syntax(ds: Dataset) -> str:
    ts = ds.file_meta.get("TransferSyntaxUID")
    if not ts:
        raise InstanceRejected(CANNOT_UNDERSTAND, "File Meta has no Transfer Syntax UID")
    if not transfer_syntax.is_accepted(str(ts)):
        raise InstanceRejected(TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts}")
    return str(ts)


def _locate_pixel_data(fp: BinaryIO, size: int, ts: str) -> PixelDataLocation | None:
    """Find the pixel data after the header and check it, and what follows, is complete."""
    start = fp.tell()
    if start >= size:
        return None
    endian = "<" if ts != transfer_syntax.EXPLICIT_VR_BIG_ENDIAN else ">"
    tag, vr, offset, length = _element_header(fp, start, endian, ts)
    if tag not in PIXEL_TAGS:
        return None
    if length == UNDEFINED:
        end = _skip_fragments(fp, offset, size)
    elif offset + length > size:
        raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated inside the pixel data")
    else:
        end = offset + length
    _check_trailing(fp, end, size, endian, ts)
    return PixelDataLocation(tag, vr, offset, None if length == UNDEFINED else length)


def _check_trailing(fp: BinaryIO, position: int, size: int, endian: str, ts: str) -> None:
    """Elements after the pixel data (e.g. trailing padding) must be whole too."""
    while position < size:
        fp.seek(position)
        _, _, offset, length = _element_header(fp, position, endian, ts)
        if length == UNDEFINED:
            return  # a sequence after the pixels: rare, and pydicom never read it
        if offset + length > size:
            raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated after the pixel data")
        position = offset + length


def _element_header(
    fp: BinaryIO, start: int, endian: str, ts: str
) -> tuple[int, str | None, int, int]:
    head = _read_exact(fp, 8)
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | elem
    if ts == transfer_syntax.IMPLICIT_VR_LITTLE_ENDIAN:
        return tag, None, start + 8, struct.unpack("<I", head[4:])[0]
    vr = head[4:6].decode("latin-1")
    if vr in LONG_VRS:
        return tag, vr, start + 12, struct.unpack(endian + "I", _read_exact(fp, 4))[0]
    return tag, vr, start + 8, struct.unpack(endian + "H", head[6:])[0]


def _skip_fragments(fp: BinaryIO, offset: int, size: int) -> int:
    """Walk the encapsulated items to their delimiter (PS3.5 §A.4), checking extents."""
    fp.seek(offset)
    while True:
        group, elem, length = struct.unpack("<HHI", _read_exact(fp, 8))
        tag = group << 16 | elem
        if tag == SEQUENCE_END:
            return fp.tell()
        if tag != ITEM or length == UNDEFINED:
            raise InstanceRejected(CANNOT_UNDERSTAND, "malformed encapsulated pixel data")
        if fp.tell() + length > size:
            raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated inside the pixel data")
        fp.seek(length, io.SEEK_CUR)


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated")
    return data


def _check_complete(ds: Dataset, size: int, stop: int | None) -> None:
    """pydicom stops quietly at end of file: compare each value with its declared length,
    and the end of the last element with where reading stopped."""
    if stop is not None and stop > size:  # a deferred value was skipped past the end
        raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated inside a large value")
    last_end: int | None = None
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED:
            last_end = None
            continue
        last_end = raw.value_tell + raw.length
        short = last_end > size if raw.value is None else len(raw.value) < raw.length
        if short:
            raise InstanceRejected(CANNOT_UNDERSTAND, f"file truncated in element {tag:08X}")
    if stop is not None and last_end is not None and last_end != stop:
        raise InstanceRejected(CANNOT_UNDERSTAND, "file truncated inside an element header")


def _header(values_of: Callable[[int], list[Any]], ts: str) -> InstanceHeader:
    """The index header from each wanted tag's values (``values_of``)."""
    values = _Values(values_of)
    optional: dict[str, Any] = {name: values.text(keyword) for name, keyword in _TEXT_FIELDS}
    optional.update({name: values.integer(keyword) for name, keyword in _INT_FIELDS})
    return InstanceHeader(
        study_instance_uid=values.uid("StudyInstanceUID"),
        series_instance_uid=values.uid("SeriesInstanceUID"),
        sop_instance_uid=values.uid("SOPInstanceUID"),
        sop_class_uid=values.uid("SOPClassUID"),
        transfer_syntax_uid=ts,
        **optional,
    )


class _DatasetValues:
    """The values of a pydicom dataset's top-level elements by tag, as a list each."""

    def __init__(self, ds: Dataset, ts: str) -> None:
        self._ds = ds
        # raw values decoded directly: pydicom's per-keyword access cost ~2 ms an instance
        self._codec = text_codec(ds)
        self._little = ts != transfer_syntax.EXPLICIT_VR_BIG_ENDIAN

    def of(self, tag: int) -> list[Any]:
        with _cannot_understand():
            raw = self._ds.get_item(tag)
            if raw is None:
                return []
            if isinstance(raw, RawDataElement):
                decoded = raw_values(raw, self._codec, self._little)
                if decoded is not None:
                    return decoded
            value = self._ds[tag].value
        if value is None:
            return []
        return list(value) if isinstance(value, MultiValue | list) else [value]


class _Values:
    """The header fields from the values of the wanted tags."""

    def __init__(self, values_of: Callable[[int], list[Any]]) -> None:
        self._values_of = values_of

    def of(self, keyword: str) -> list[Any]:
        return self._values_of(_TAGS[keyword])

    def text(self, keyword: str) -> str | None:
        found = self.of(keyword)
        if all(v is None or v == "" for v in found):
            return None
        return "\\".join(str(v) for v in found)

    def integer(self, keyword: str) -> int | None:
        found = self.of(keyword)
        if len(found) != 1 or found[0] is None or found[0] == "":
            return None
        try:
            return int(found[0])
        except (TypeError, ValueError):
            return None

    def uid(self, keyword: str) -> str:
        value = (self.text(keyword) or "").strip()
        if not value:
            raise InstanceRejected(CANNOT_UNDERSTAND, f"missing {keyword}")
        if len(value) > 64 or not _UID_RE.fullmatch(value):
            raise InstanceRejected(CANNOT_UNDERSTAND, f"invalid {keyword}: {value!r}")
        return value
