"""DICOM JSON (PS3.18 Annex F.2) for QIDO-RS results and WADO-RS metadata.

``to_dicom_json`` converts a dataset to the JSON model without bulk data:
binary values above a threshold, and values pydicom deferred while reading
when their VR may be bulk data (``BULK_DATA_VRS``; others are read in,
``read_inline_values``), become a ``BulkDataURI`` under the instance's
``/bulkdata/{tag path}``, so ``/metadata`` never carries pixels. Tag paths
are ``GGGGEEEE`` at the top level and ``SSSSSSSS/{item}/GGGGEEEE`` inside
sequences (the URI form is the origin server's choice, PS3.18 §F.2.7).
``from_dicom_json`` goes back through pydicom's reader.

Raw values of the common VRs in a single-codec character set are decoded
here straight from their bytes (``raw_values``), the way pydicom's own
converters do it, without building pydicom's value objects: that halved the
CPU cost of an instance at ingest. Anything else goes through pydicom.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from dicomweb.pixel_codec import NUMBER_WIDTHS, swap_bytes

DEFAULT_BULK_THRESHOLD = 1024
PIXEL_DATA = 0x7FE00010

# PS3.18 Table F.2.3-1: how each VR's values are written in JSON.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.18 §F.2.2: the VRs whose value may be given as a BulkDataURI. A long value of
# another VR (a sequence's items, names, codes) is always in the JSON itself.
BULK_DATA_VRS = _BINARY_VRS | {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV"}
BULK_DATA_VRS |= {"UC", "UL", "US", "UT", "UV"}
_INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_EXACT_IN_JSON = 2**53 - 1  # the largest integer an IEEE double holds exactly
# pydicom's ambiguous VRs, resolved the way PS3.5 Annex A usually does for LE data.
_AMBIGUOUS: dict[str, str] = {
    "US or SS": "US",
    "OB or OW": "OW",
    "US or OW": "US",
    "US or SS or OW": "US",
}
# Character sets (0008,0005) that decode with one Python codec, as pydicom does
# (its default repertoire is Latin-1); ISO 2022 code extensions go through pydicom.
CODECS: dict[str, str] = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1"}
CODECS["ISO_IR 192"] = "utf_8"
_LATIN1_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST"})
_STRUCT_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
SPECIFIC_CHARACTER_SET = 0x00080005
_TAG_PATH_RE = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]+/[0-9A-Fa-f]{8})*$")

JsonDataset = dict[str, Any]
BulkResolver = Callable[[str, str, str], Any]


@dataclass(frozen=True)
class _Context:
    uri_prefix: str | None
    threshold: int
    codec: str | None = None
    little_endian: bool = True


def text_codec(ds: Dataset) -> str | None:
    """The one Python codec of ``ds``'s character set, or None (pydicom decodes)."""
    raw = ds.get_item(SPECIFIC_CHARACTER_SET, keep_deferred=True)
    if raw is None:
        return CODECS[""]
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("latin_1").strip(" \x00")
    elif isinstance(value, MultiValue | list) and len(value) == 1:
        value = value[0]
    return CODECS.get(value.strip()) if isinstance(value, str) else None


def raw_values(raw: RawDataElement, codec: str | None, little_endian: bool) -> list[Any] | None:
    """The values of a raw element decoded from its bytes as pydicom's converters
    would (strings, ints, floats), or None when pydicom must do it."""
    vr, data = raw.VR, raw.value
    if vr is None or not isinstance(data, bytes):
        return None
    return decode_values(vr, data, codec, little_endian)


def decode_values(vr: str, data: bytes, codec: str | None, little_endian: bool) -> list[Any] | None:
    """``raw_values`` of a value of ``vr`` stored as ``data``."""
    try:
        if vr in _LATIN1_VRS:
            return _numbers_checked(vr, data.decode("latin_1").rstrip(" \x00").split("\\"))
        if codec is not None and vr in _TEXT_VRS:
            return [v.rstrip("\x00 ") for v in data.decode(codec).split("\\")]
        if codec is not None and vr == "PN":
            return data.rstrip(b"\x00 ").decode(codec).split("\\")
        if codec is not None and vr in _SINGLE_TEXT_VRS:
            return [data.decode(codec).rstrip("\x00 ")]
    except UnicodeDecodeError:
        return None
    fmt = _STRUCT_FORMATS.get(vr)
    if fmt is None or not little_endian or len(data) % struct.calcsize(fmt):
        return None
    return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))


def _numbers_checked(vr: str, values: list[str]) -> list[str] | None:
    """IS and DS strings that Python cannot read as numbers are left to pydicom."""
    if vr not in ("IS", "DS"):
        return values
    parse: Callable[[str], object] = int if vr == "IS" else float
    try:
        for v in values:
            if v.strip():
                parse(v)
    except ValueError:
        return None
    return values


def instance_uri_prefix(base: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The WADO-RS instance URL that bulk data URIs hang from (PS3.18 §10.4.1)."""
    return f"{base.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def format_tag_path(path: tuple[int, ...]) -> str:
    """``(seq, item, tag, ...)`` → ``SSSSSSSS/item/GGGGEEEE`` for a bulkdata URI."""
    return "/".join(f"{p:08X}" if i % 2 == 0 else str(p) for i, p in enumerate(path))


def parse_tag_path(text: str) -> tuple[int, ...]:
    """Inverse of ``format_tag_path``; raises ValueError on anything else."""
    if not _TAG_PATH_RE.fullmatch(text):
        raise ValueError(f"not a bulk data tag path: {text!r}")
    return tuple(int(p, 16) if i % 2 == 0 else int(p) for i, p in enumerate(text.split("/")))


def to_dicom_json(
    ds: Dataset,
    *,
    bulk_uri_prefix: str | None = None,
    threshold: int = DEFAULT_BULK_THRESHOLD,
    extra_bulk: Iterable[tuple[int, str]] = (),
) -> JsonDataset:
    """Dataset → DICOM JSON object (PS3.18 §F.2), large values as BulkDataURI.

    Without ``bulk_uri_prefix`` every value is inline. ``extra_bulk`` names
    elements absent from ``ds`` (pixel data read with stop_before_pixels) to
    list as bulk data anyway.
    """
    ctx = _Context(bulk_uri_prefix, threshold, text_codec(ds), _little_endian(ds))
    return _top_level(_dataset(ds, (), ctx), ctx, extra_bulk)


def with_bulk_uris(
    elements: JsonDataset,
    bulk: Iterable[tuple[JsonDataset, tuple[int, ...]]],
    bulk_uri_prefix: str,
    extra_bulk: Iterable[tuple[int, str]] = (),
) -> JsonDataset:
    """``to_dicom_json``'s result from elements converted elsewhere
    (``header_scan``): each element of ``bulk`` (inside ``elements``) gets, in
    place, the BulkDataURI of its tag path; ``extra_bulk`` is listed as bulk data,
    and the top level is sorted."""
    ctx = _Context(bulk_uri_prefix, DEFAULT_BULK_THRESHOLD)
    for element, path in bulk:
        element["BulkDataURI"] = _bulk_uri(ctx, path)
    return _top_level(dict(elements), ctx, extra_bulk)


def _top_level(
    out: JsonDataset, ctx: _Context, extra_bulk: Iterable[tuple[int, str]]
) -> JsonDataset:
    """``out`` with the ``extra_bulk`` elements listed (when bulk data has URIs), sorted."""
    if ctx.uri_prefix is not None:
        for tag, vr in extra_bulk:
            out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": _bulk_uri(ctx, (tag,))}
    return dict(sorted(out.items()))


def _dataset(ds: Dataset, parent: tuple[int, ...], ctx: _Context) -> JsonDataset:
    out: JsonDataset = {}
    for tag in ds.keys():
        if tag & 0xFFFF == 0:  # group lengths are not part of the JSON model
            continue
        path = (*parent, int(tag))
        raw = ds.get_item(tag, keep_deferred=True)
        if _bulk_deferred(raw):
            out[f"{tag:08X}"] = _deferred(raw, path, ctx)
            continue
        values = None
        if isinstance(raw, RawDataElement) and raw.tag != SPECIFIC_CHARACTER_SET:
            values = raw_values(raw, ctx.codec, ctx.little_endian)
        if values is None:
            out[f"{tag:08X}"] = _element(ds[tag], path, ctx)
        else:
            out[f"{tag:08X}"] = from_values(str(raw.VR), values)
    return out


def _little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts or "") != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)


def from_values(vr: str, values: list[Any]) -> JsonDataset:
    if all(v is None or v == "" for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": [_scalar(vr, v) for v in values]}


def is_deferred(raw: object) -> TypeGuard[RawDataElement]:
    """Whether pydicom left the element's value in the file (read with ``defer_size``)."""
    return isinstance(raw, RawDataElement) and raw.value is None and bool(raw.length)


def _bulk_deferred(raw: object) -> TypeGuard[RawDataElement]:
    """A deferred value the JSON gives as a BulkDataURI, without reading it."""
    return is_deferred(raw) and _vr(raw.VR, raw.tag) in BULK_DATA_VRS


def read_inline_values(ds: Dataset) -> None:
    """Read in the deferred values of ``ds`` that ``to_dicom_json`` cannot give as
    bulk data (a long sequence, say), while the file they are in can still be read."""
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if is_deferred(raw) and not _bulk_deferred(raw):
            ds.get_item(tag)  # reads and converts it, in place


def _deferred(raw: RawDataElement, path: tuple[int, ...], ctx: _Context) -> JsonDataset:
    vr = _vr(raw.VR, raw.tag)
    if ctx.uri_prefix is None:
        raise ValueError(f"value of {raw.tag:08X} was deferred and no bulk URI prefix given")
    return {"vr": vr, "BulkDataURI": _bulk_uri(ctx, path)}


def dictionary_vr(tag: int) -> str:
    """The data dictionary's VR of ``tag``, an ambiguous one resolved as values are
    written here; UN for a tag the dictionary does not know (a private one)."""
    return _vr(None, tag)


def _vr(vr: str | None, tag: int) -> str:
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return _AMBIGUOUS.get(vr, vr)


def _element(elem: DataElement, path: tuple[int, ...], ctx: _Context) -> JsonDataset:
    vr = _vr(elem.VR, elem.tag)
    value = elem.value
    if vr == "SQ":
        items = [
            _dataset(item, (*path, i), _item_context(item, ctx))
            for i, item in enumerate(value or [])
        ]
        return {"vr": vr, "Value": items} if items else {"vr": vr}
    if vr in _BINARY_VRS or isinstance(value, bytes):
        return _binary(vr if vr in _BINARY_VRS else "OW", value, path, ctx)
    return from_values(vr, _as_list(value))


def _item_context(item: Dataset, ctx: _Context) -> _Context:
    """The context of a sequence item: one with a Specific Character Set of its own
    has its text in that one, for itself and the items it nests (PS3.5 §7.5.3);
    read with the enclosing data set's codec, its names came out as mojibake. An
    empty one is no character set of its own, as pydicom reads it."""
    raw = item.get_item(SPECIFIC_CHARACTER_SET, keep_deferred=True)
    value = None if raw is None else raw.value
    if isinstance(value, bytes):
        value = value.strip(b" \x00")
    return replace(ctx, codec=text_codec(item)) if value else ctx


def _binary(vr: str, value: bytes | None, path: tuple[int, ...], ctx: _Context) -> JsonDataset:
    if not value:
        return {"vr": vr}
    if ctx.uri_prefix is not None and (len(value) > ctx.threshold or path == (PIXEL_DATA,)):
        return {"vr": vr, "BulkDataURI": _bulk_uri(ctx, path)}
    if not ctx.little_endian:  # the same octets as the value sent as bulk data (§8.7.3.3.1)
        value = swap_bytes(value, NUMBER_WIDTHS.get(vr, 1))
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def _bulk_uri(ctx: _Context, path: tuple[int, ...]) -> str:
    return f"{ctx.uri_prefix}/bulkdata/{format_tag_path(path)}"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _scalar(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if vr == "PN":
        return _person_name(value)
    if vr == "AT":
        return f"{int(value):08X}"
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        return _number(vr, value)
    return str(value)


def _number(vr: str, value: Any) -> int | float | str | None:
    """JSON number; an unparsable IS/DS string is passed through rather than lost; a
    64-bit integer beyond what a JSON reader holds exactly, ±(2^53 - 1), as a string
    (PS3.18 §F.2.3.1; a JavaScript viewer would round it, and MongoDB cannot store an
    unsigned one above 2^63 - 1)."""
    try:
        number = int(value) if vr in _INT_VRS else float(value)
    except (TypeError, ValueError):
        return str(value).strip() or None
    if isinstance(number, int):
        return number if abs(number) <= _EXACT_IN_JSON else str(number)
    return number if math.isfinite(number) else None


def _person_name(value: Any) -> dict[str, str] | None:
    """PN as its component groups (PS3.18 §F.2.2)."""
    pn = value if isinstance(value, PersonName) else PersonName(str(value))
    groups = {
        "Alphabetic": pn.alphabetic,
        "Ideographic": pn.ideographic,
        "Phonetic": pn.phonetic,
    }
    kept = {name: text for name, text in groups.items() if text}
    return kept or None


def from_dicom_json(obj: JsonDataset, bulk_resolver: BulkResolver | None = None) -> Dataset:
    """DICOM JSON object → Dataset (PS3.18 §F.2); BulkDataURIs resolved by ``bulk_resolver``.

    Without a resolver, bulk data values are left empty.
    """
    return Dataset.from_json(obj, bulk_resolver or _no_bulk_data)


def _no_bulk_data(tag: str, vr: str, uri: str) -> None:
    return None
