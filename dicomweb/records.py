"""What the DICOM index stores about one parsed instance, and its match keys.

``index_record`` splits a parsed instance's DICOM JSON into study, series and
instance attributes (by the level PS3.18's tables give each attribute),
precomputes the instance's WADO-RS metadata (bulk data as BulkDataURIs), and
derives the *match keys*: each matching attribute's values normalised exactly
as ``qido_compile`` normalises query values, so the index compares plain
strings (person names case-folded per component group, dates and times
padded to full precision, numbers canonical). Two derived keys serve matching
rules that span attributes: a DA/TM pair's moment (``datetime_key``, for
combined date and time range matching) and one value per sequence item joining
its item keys (``item_key``, so keys within one sequence match in one item).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any

import orjson

from dicomweb.blobstore import BlobRef
from dicomweb.coalesce import outcomes
from dicomweb.dicom_json import (
    JsonDataset,
    dictionary_vr,
    instance_uri_prefix,
    to_dicom_json,
    with_bulk_uris,
)
from dicomweb.ingest_parse import (
    CANNOT_UNDERSTAND,
    InstanceHeader,
    InstanceRejected,
    ParsedInstance,
    PixelDataLocation,
    ScannedInstance,
    parse_instance,
    scan_instance,
)
from dicomweb.qido import (
    LEVEL_OF,
    MATCHING_ATTRIBUTES,
    NUMERIC_VRS,
    RANGE_VRS,
    Level,
    attribute_level,
    date_time_pairs,
    pn_normal,
    sequence_keys,
)
from dicomweb.qido import normalise_bound as _bound
from fhir_server.storage.dicom_port import (
    BlobLocation,
    DicomIndex,
    InstanceRecord,
    Json,
    MatchKeys,
)

TRANSFER_SYNTAX_UID = "00020010"
# Joins an item's key values in its ``item_key`` value; DICOM text values never
# hold it (PS3.5 §6.1.3 allows no control characters but ESC, LF, FF and CR).
ITEM_SEPARATOR = "\x1f"
# Bump when the derived keys change, so indexed rows are re-keyed (``rekey_index``).
KEYS_VERSION = "4"
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

# Attributes kept with the study and series rows beyond those PS3.18's tables
# name (ImagingStudy and viewers use them). Besides these, every attribute of the
# patient (group 0010: the Patient and Patient Study modules, e.g. IssuerOfPatientID,
# PatientAge, PatientWeight) is kept with the study, so that a study-level
# includefield for one finds its value (PS3.18 Table 10.6.3-3); the archive
# refuses an instance naming another patient than its study's (``ingest``).
_PATIENT_GROUP = 0x0010
_EXTRA_LEVEL: dict[int, Level] = {
    0x00081030: "study",  # StudyDescription
    0x00200010: "study",  # StudyID
    0x00081032: "study",  # ProcedureCodeSequence
    0x00080021: "series",  # SeriesDate
    0x00080031: "series",  # SeriesTime
    0x00180015: "series",  # BodyPartExamined
    0x00200060: "series",  # Laterality
    0x00181030: "series",  # ProtocolName
    0x00081010: "series",  # StationName
}


# Kept with every level: PS3.18's tables return TimezoneOffsetFromUTC at the study,
# series and instance levels, and the ImagingStudy's ``started`` needs it with the
# study's date and time.
_EVERY_LEVEL = frozenset({0x00080201})

# The most data elements an instance may hold outside its pixel data: at its top
# level, and in all (sequence items included). Each top-level element goes into
# every QIDO-RS answer with includefield=all that names the instance, built on the
# event loop; every element goes into the series' metadata. 300,000 top-level
# elements made one such answer 11 MB and held the loop for 0.54 s. Real objects
# stay far below: an image header has a few hundred top-level elements at most,
# private ones included, and the largest headers, multi-frame objects with a
# functional group per frame, nest their elements in sequences (a 50,000-tile
# slide image with a position per frame: ~350,000 in all).
MAX_TOP_LEVEL_ELEMENTS = 10_000
MAX_ELEMENTS = 2_000_000


def level_of(tag: int) -> Level:
    """The level an attribute is stored at: the tables, the extras, the patient's at
    the study, else instance."""
    found = _EXTRA_LEVEL.get(tag) or LEVEL_OF.get(tag)
    if found is not None:
        return found
    return "study" if tag >> 16 == _PATIENT_GROUP else "instance"


def number_normal(value: Any) -> str:
    """A canonical string for a number: ``"007"``, ``7.0`` and ``7`` all give ``"7"``."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def normal_values(vr: str, value: Any) -> list[str]:
    """The match-key strings of one stored value (PS3.4 C.2.2.2 comparison form)."""
    if value is None or value == "":
        return []
    if vr == "PN":
        groups = [value.get(g, "") for g in _PN_GROUPS] if isinstance(value, dict) else [value]
        return [pn_normal(str(g)) for g in groups if g]
    if vr in RANGE_VRS:
        return [_bound(vr, str(value), high=False)]
    if vr in NUMERIC_VRS:
        try:
            return [number_normal(value)]
        except (TypeError, ValueError):
            return [str(value)]
    if vr in _PADDED_VRS:
        return [text] if (text := str(value).strip()) else []
    return [str(value)]


# VRs whose leading and trailing spaces are padding, not value (PS3.5 Table 6.2-1): an
# AccessionNumber sent as " A2 " is matched by A2, as a C-FIND SCP would
_PADDED_VRS = frozenset({"AE", "CS", "LO", "SH", "UI"})


def key_name(path: tuple[int, ...]) -> str:
    """The match key of a tag path: ``GGGGEEEE`` or ``SSSSSSSS.GGGGEEEE``."""
    return ".".join(f"{t:08X}" for t in path)


def _path_values(attrs: Json, path: tuple[int, ...]) -> list[Any]:
    element = attrs.get(f"{path[0]:08X}") or {}
    values = [v for v in element.get("Value") or [] if v is not None]
    if len(path) == 1:
        return values
    return [v for item in values if isinstance(item, dict) for v in _path_values(item, path[1:])]


def datetime_key(date_tag: int, time_tag: int) -> str:
    """The key of a DA/TM pair's moment: ``DDDDDDDD+TTTTTTTT``, values ``YYYYMMDDHHMMSS.FFFFFF``."""
    return f"{date_tag:08X}+{time_tag:08X}"


def item_key(sequence: int) -> str:
    """The key of a sequence's items: one value per item, its item keys' values
    joined by ``ITEM_SEPARATOR`` in ``sequence_keys`` order ("" where absent)."""
    return f"{sequence:08X}"


def _normal_at(attrs: Json, path: tuple[int, ...]) -> list[str]:
    vr = dictionary_vr(path[-1])
    return [n for value in _path_values(attrs, path) for n in normal_values(vr, value)]


def match_keys(level: Level, attrs: Json) -> MatchKeys:
    """Every (key, value) the index matches ``level`` on, from its DICOM JSON."""
    keys: list[tuple[str, str]] = []
    for path in MATCHING_ATTRIBUTES[level]:
        keys.extend((key_name(path), v) for v in _normal_at(attrs, path))
    for date, time in date_time_pairs(level):
        moments = product(_normal_at(attrs, (date,)), _normal_at(attrs, (time,)))
        keys.extend((datetime_key(date, time), d + t) for d, t in moments if len(d) == 8)
    for sequence, paths in sequence_keys(level).items():
        keys.extend((item_key(sequence), v) for v in _item_values(attrs, sequence, paths))
    return tuple(keys)


def _item_values(attrs: Json, sequence: int, paths: Sequence[tuple[int, ...]]) -> list[str]:
    """One value per item (per combination, where an item key has several values)."""
    items = [
        i for i in (attrs.get(f"{sequence:08X}") or {}).get("Value") or [] if isinstance(i, dict)
    ]
    out: list[str] = []
    for item in items:
        columns = [_normal_at(item, path) or [""] for path in paths]
        if any(column != [""] for column in columns):
            out.extend(ITEM_SEPARATOR.join(combo) for combo in product(*columns))
    return out


# The levels whose keys changed since the previous KEYS_VERSIONs: "1" had no datetime
# and item keys, which exist at the study and series levels only; "2" kept the
# padding of AE, CS, LO, SH and UI values (a PatientID or AccessionNumber sent as
# " A2 "), which the instance level's keys do not hold in practice; "3" case-folded
# person names with ``str.casefold``, which made ``ß`` two characters (``case_fold``):
# PN keys are the study level's only.
_REKEYED: tuple[Level, ...] = ("study", "series")


async def rekey_index(index: DicomIndex) -> int:
    """Re-derive the match keys of rows indexed before ``KEYS_VERSION`` from their
    stored attributes (once: the index remembers the version); rows re-keyed."""
    return await index.rekey(KEYS_VERSION, match_keys, _REKEYED)


def split_levels(full: Json) -> dict[Level, Json]:
    """Top-level DICOM JSON elements by the level they belong to (bulk data left out)."""
    out: dict[Level, Json] = {"study": {}, "series": {}, "instance": {}}
    for tag, element in full.items():
        if "BulkDataURI" in element or "InlineBinary" in element:
            continue
        for level in _stored_levels(int(tag, 16)):
            out[level][tag] = element
    return out


def _stored_levels(tag: int) -> tuple[Level, ...]:
    """Where an attribute is kept: at its ``level_of``; an instance's attribute that
    the information model puts higher (Manufacturer, a series' General Equipment;
    NameOfPhysiciansReadingStudy, a study's) also at that level, so a search there
    returns it (``qido_levels``), and still with the instance, as before."""
    if tag in _EVERY_LEVEL:
        return ("study", "series", "instance")
    stored = level_of(tag)
    if stored == "instance" and (model := attribute_level(tag)) != "instance":
        return (model, "instance")
    return (stored,)


def index_record(
    parsed: ParsedInstance, blob: BlobLocation, base_url: str, patient_ref: str | None = None
) -> InstanceRecord:
    """The ``InstanceRecord`` of one parsed, stored instance (PS3.18 §10.5 → index)."""
    h, pixel = parsed.header, parsed.pixel_data
    full = to_dicom_json(
        parsed.dataset, bulk_uri_prefix=_uri_prefix(h, base_url), extra_bulk=_pixel_bulk(pixel)
    )
    return _record(h, full, pixel, blob, patient_ref)


def scanned_record(
    scanned: ScannedInstance, blob: BlobLocation, base_url: str, patient_ref: str | None = None
) -> InstanceRecord:
    """``index_record`` of an instance read by the fast road (``scan_instance``)."""
    h, pixel = scanned.header, scanned.pixel_data
    prefix = _uri_prefix(h, base_url)
    full = with_bulk_uris(scanned.elements, scanned.bulk, prefix, _pixel_bulk(pixel))
    return _record(h, full, pixel, blob, patient_ref)


def _uri_prefix(h: InstanceHeader, base_url: str) -> str:
    return instance_uri_prefix(
        base_url, h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid
    )


def _pixel_bulk(pixel: PixelDataLocation | None) -> list[tuple[int, str]]:
    return [(pixel.tag, pixel.vr or "OW")] if pixel is not None else []


def _record(
    h: InstanceHeader,
    full: JsonDataset,
    pixel: PixelDataLocation | None,
    blob: BlobLocation,
    patient_ref: str | None,
) -> InstanceRecord:
    _check_element_counts(h, full)
    full[TRANSFER_SYNTAX_UID] = {"vr": "UI", "Value": [h.transfer_syntax_uid]}
    levels = split_levels(full)
    return InstanceRecord(
        study_uid=h.study_instance_uid,
        series_uid=h.series_instance_uid,
        sop_uid=h.sop_instance_uid,
        blob=blob,
        transfer_syntax_uid=h.transfer_syntax_uid,
        study_attrs=levels["study"],
        series_attrs=levels["series"],
        instance_attrs=levels["instance"],
        metadata=orjson.dumps(dict(sorted(full.items()))),
        study_keys=match_keys("study", levels["study"]),
        series_keys=match_keys("series", levels["series"]),
        instance_keys=match_keys("instance", levels["instance"]),
        modality=h.modality,
        instance_number=h.instance_number,
        patient_ref=patient_ref,
        extra=_pixel_extra(h, pixel),
        patient_key=patient_key(h),
    )


def patient_key(h: InstanceHeader) -> str:
    """Who the instance says its patient is, as the index compares it: Patient ID and
    Issuer of Patient ID exactly ("\\" cannot occur in either, a LO value)."""
    return f"{h.patient_id or ''}\\{h.issuer_of_patient_id or ''}"


def _check_element_counts(h: InstanceHeader, full: JsonDataset) -> None:
    """Refuse an instance with more data elements than this archive serves: 0xC000,
    as sending it again cannot succeed, which a retryable 0xA700 would suggest."""
    why = too_many_elements(full, MAX_TOP_LEVEL_ELEMENTS, MAX_ELEMENTS)
    if why is not None:
        message = f"the data set has {why}: more than this archive takes"
        raise InstanceRejected(CANNOT_UNDERSTAND, message, h.sop_class_uid, h.sop_instance_uid)


def too_many_elements(dataset: JsonDataset, top_level: int, in_all: int) -> str | None:
    """What is over the limits in a DICOM JSON data set, if anything: more than
    ``top_level`` elements at its top level, or ``in_all`` counting items' elements."""
    if len(dataset) > top_level:
        return f"{len(dataset):,} data elements at its top level (at most {top_level:,})"
    if element_count(dataset, in_all) > in_all:
        return f"more than {in_all:,} data elements in all"
    return None


def element_count(dataset: JsonDataset, most: int) -> int:
    """Data elements in a DICOM JSON data set, items' included; the count stops
    once it passes ``most``."""
    count = 0
    pending = [dataset]
    while pending and count <= most:
        current = pending.pop()
        count += len(current)
        for element in current.values():
            if element.get("vr") == "SQ":
                pending.extend(element.get("Value") or ())
    return count


def _pixel_extra(h: InstanceHeader, pixel: PixelDataLocation | None) -> Json:
    """What frame retrieval needs without re-parsing: where the pixels are, their shape."""
    extra: Json = {
        "frames": h.number_of_frames or (1 if pixel is not None else 0),
        "rows": h.rows,
        "columns": h.columns,
        "bits": h.bits_allocated,
        "samples": h.samples_per_pixel,
    }
    if pixel is not None:
        extra["pixel"] = {
            "tag": pixel.tag,
            "vr": pixel.vr,
            "offset": pixel.offset,
            "length": pixel.length,
        }
    return extra


@dataclass(frozen=True)
class Described:
    """An instance parsed and made into its index record away from the event loop
    (``describe_instance``); the record's blob is filled in once the file is kept."""

    header: InstanceHeader
    record: InstanceRecord


_NO_BLOB = BlobLocation("", 0, "")


def describe_instance(source: Path | bytes, base_url: str) -> Described:
    """Parse one received instance and build its index record (pure; picklable, so
    it runs in a worker process). Raises ``InstanceRejected``."""
    try:
        return _describe(source, base_url)
    except (RecursionError, orjson.JSONEncodeError) as exc:
        # sequences nested deeper than a parser's recursion or JSON's depth allow
        # (no real object nests near that): a data set that cannot be read here
        message = f"the data set cannot be read: its sequences nest too deeply ({exc})"
        raise InstanceRejected(CANNOT_UNDERSTAND, message) from None


def _describe(source: Path | bytes, base_url: str) -> Described:
    scanned = scan_instance(source)
    if scanned is not None:
        return Described(scanned.header, scanned_record(scanned, _NO_BLOB, base_url))
    parsed = parse_instance(source)
    return Described(parsed.header, index_record(parsed, _NO_BLOB, base_url))


def describe_many(sources: Sequence[Path | bytes], base_url: str) -> list[Described | Exception]:
    """``describe_instance`` of each source, in one call (one trip to a worker
    process for several instances); a source that fails gives its exception, so
    one bad instance does not fail the others."""
    return outcomes(partial(describe_instance, base_url=base_url), sources)


def with_blob(record: InstanceRecord, blob: BlobRef) -> InstanceRecord:
    """``record`` for the file now kept under ``blob``'s key."""
    return replace(record, blob=BlobLocation(blob.key, blob.size, blob.sha256))
