"""A direct reader of the common case at ingest: an explicit VR little endian
Part-10 header whose every value decodes without pydicom.

Describing an instance with pydicom cost ~1 ms of CPU for a 42-element CT
header (its element generator, ``FileDataset``, the per-element look-ups of the
completeness check, the header fields and the DICOM JSON): a third of the
whole STOW-RS cost of an instance. ``scan`` walks the bytes once with
``struct`` and builds what ingest needs from them: the DICOM JSON of the
dataset (``dicom_json``'s own value rules, so the output is the same), the
decoded values of the top-level elements the index reads, and where reading
stopped (the pixel data, as pydicom's ``stop_before_pixels``).

Anything outside that case makes ``scan`` return None, and the caller parses
with pydicom (``ingest_parse.parse_instance``), which then gives the same
result or the rejection with its reason: another transfer syntax, a file
without the ``DICM`` prefix, a character set with code extensions, a VR whose
values pydicom converts itself (UN, AT, UT, ...), a non-binary value pydicom
would defer, elements out of order, a truncated element. A test checks that
both roads agree on every file the scan accepts.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

from dicomweb import transfer_syntax
from dicomweb.dicom_json import (
    CODECS,
    DEFAULT_BULK_THRESHOLD,
    SPECIFIC_CHARACTER_SET,
    JsonDataset,
    decode_values,
    from_values,
)

_PREAMBLE = 128
_MAGIC = b"DICM"
_ELEMENT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<HHI")
UNDEFINED = 0xFFFFFFFF  # an undefined length
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# PS3.5 Table 7.1-1: VRs with a 4-byte length after two reserved bytes.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_VRS: dict[bytes, str] = {
    vr.encode("ascii"): vr
    for vr in (
        *LONG_VRS,
        *("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT"),
        *("PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"),
    )
}
# Transfer syntaxes whose data set is not explicit VR little endian as stored.
_OTHER_ENCODINGS = frozenset(
    {
        transfer_syntax.IMPLICIT_VR_LITTLE_ENDIAN,
        transfer_syntax.EXPLICIT_VR_BIG_ENDIAN,
        transfer_syntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)
TagPath = tuple[int, ...]


class NeedMore(Exception):
    """The bytes given end before the header does: scan the whole file."""


class _Outside(Exception):
    """Not the common case: pydicom reads this file."""


@dataclass
class Scan:
    """What ``scan`` read. ``elements``: the data set's DICOM JSON in file order,
    without the pixel data; each element in ``bulk`` (with its tag path) still
    lacks its ``BulkDataURI``, which needs the instance's UIDs. ``values``: the
    decoded values of the wanted top-level elements. ``stop``: where reading
    stopped, at the pixel data or the end of the file."""

    transfer_syntax_uid: str
    elements: JsonDataset = field(default_factory=dict)
    bulk: list[tuple[JsonDataset, TagPath]] = field(default_factory=list)
    values: dict[int, list[Any]] = field(default_factory=dict)
    stop: int = 0


def scan(
    data: bytes,
    size: int,
    wanted: dict[int, str],
    *,
    threshold: int = DEFAULT_BULK_THRESHOLD,
    defer_size: int,
) -> Scan | None:
    """Read the Part-10 header at the start of ``data`` (the first bytes of a file
    of ``size`` bytes). ``wanted``: the top-level tags whose values to keep, each
    with the VR it must have. Binary values above ``threshold`` become bulk data;
    a non-binary value above ``defer_size`` is left to pydicom. None when the file
    is not the common case; raises ``NeedMore`` when ``data`` ends too soon."""
    reader = _Reader(data, len(data) >= size, wanted, threshold, defer_size)
    try:
        return reader.read()
    except _Outside:
        return None


class _Reader:
    def __init__(
        self,
        data: bytes,
        complete: bool,
        wanted: dict[int, str],
        threshold: int,
        defer_size: int,
    ) -> None:
        self._data = data
        self._complete = complete
        self._wanted = wanted
        self._threshold = threshold
        self._defer_size = defer_size
        self._codec = CODECS[""]
        self._scan = Scan("")

    def read(self) -> Scan:
        if len(self._data) < _PREAMBLE + 4:
            self._short()
        if self._data[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
            raise _Outside
        position, ts = self._file_meta(_PREAMBLE + 4)
        if ts in _OTHER_ENCODINGS or not transfer_syntax.is_accepted(ts):
            raise _Outside
        self._scan.transfer_syntax_uid = ts
        self._scan.elements, self._scan.stop = self._dataset(position, None, (), top=True)
        return self._scan

    def _short(self) -> None:
        """The bytes end inside an element: more of the file, or a truncated file."""
        raise _Outside if self._complete else NeedMore

    def _file_meta(self, position: int) -> tuple[int, str]:
        """Group 0002 (always explicit VR little endian): its Transfer Syntax UID."""
        data, ts = self._data, None
        while True:
            if position + 8 > len(data):
                self._short()
            group, elem, vr_code, length = _ELEMENT.unpack_from(data, position)
            if group != 2:
                break
            vr = _VRS.get(vr_code)
            if vr is None or vr == "SQ":
                raise _Outside
            if vr in LONG_VRS:
                length, position = self._long_length(position)
            else:
                position += 8
            if length == UNDEFINED:
                raise _Outside
            if position + length > len(data):
                self._short()
            if elem == 0x0010:
                ts = data[position : position + length].decode("latin_1").rstrip("\x00 ")
            position += length
        if not ts:
            raise _Outside
        return position, ts

    def _long_length(self, position: int) -> tuple[int, int]:
        if position + 12 > len(self._data):
            self._short()
        return _LENGTH.unpack_from(self._data, position + 8)[0], position + 12

    def _dataset(
        self, position: int, end: int | None, path: TagPath, *, top: bool = False
    ) -> tuple[JsonDataset, int]:
        """Elements from ``position`` to ``end`` (None: to an item delimiter, or at
        the top level to the pixel data or the end of the file)."""
        data, last = self._data, -1
        out: JsonDataset = {}
        while end is None or position < end:
            if position + 8 > len(data):
                if top and self._complete and position == len(data):
                    return out, position  # the file ends without pixel data
                self._short()
            group, elem, vr_code, length = _ELEMENT.unpack_from(data, position)
            tag = group << 16 | elem
            if end is None and not top and tag == ITEM_END:
                return out, position + 8
            if top and tag in PIXEL_TAGS:
                return out, position
            if tag <= last or group in (0x0002, 0xFFFE):
                raise _Outside
            last = tag
            vr = _VRS.get(vr_code)
            if vr is None or (top and not self._plain_top_level(tag, vr)):
                raise _Outside
            if vr in LONG_VRS:
                length, position = self._long_length(position)
            else:
                position += 8
            if vr == "SQ":
                element, position = self._sequence(position, length, (*path, tag))
            else:
                element, position = self._value(tag, vr, position, length, path, top)
            if elem != 0:  # group lengths are not part of the JSON model
                out[f"{tag:08X}"] = element
        if position != end:
            raise _Outside
        return out, position

    def _plain_top_level(self, tag: int, vr: str) -> bool:
        if tag < SPECIFIC_CHARACTER_SET and tag & 0xFFFF:
            return False  # read before the character set is known
        expected = self._wanted.get(tag)
        # a wanted element of another VR: pydicom's conversion decides what it means
        return expected is None or vr == expected

    def _sequence(self, position: int, length: int, path: TagPath) -> tuple[JsonDataset, int]:
        data = self._data
        items: list[JsonDataset] = []
        end = None if length == UNDEFINED else position + length
        while end is None or position < end:
            if position + 8 > len(data):
                self._short()
            group, elem, item_length = _ITEM_HEADER.unpack_from(data, position)
            tag = group << 16 | elem
            position += 8
            if tag == SEQUENCE_END and end is None:
                break
            if tag != ITEM:
                raise _Outside
            item_end = None if item_length == UNDEFINED else position + item_length
            item, position = self._dataset(position, item_end, (*path, len(items)))
            items.append(item)
        if end is not None and position != end:
            raise _Outside
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), position

    def _value(
        self, tag: int, vr: str, position: int, length: int, path: TagPath, top: bool
    ) -> tuple[JsonDataset, int]:
        if length == UNDEFINED:
            raise _Outside
        end = position + length
        if end > len(self._data):
            self._short()
        if not top and tag == SPECIFIC_CHARACTER_SET:
            raise _Outside  # a character set of its own inside an item
        if length == 0:
            if top and tag in self._wanted:
                self._scan.values[tag] = []
            return {"vr": vr}, end
        if vr in _BINARY_VRS:
            return self._binary(vr, position, end, (*path, tag)), end
        if length > self._defer_size:
            raise _Outside
        raw = self._data[position:end]
        values: list[Any] | None
        if tag == SPECIFIC_CHARACTER_SET:
            values = self._character_set(raw)
        else:
            values = decode_values(vr, raw, self._codec, True)
        if values is None:
            raise _Outside
        if top and tag in self._wanted:
            self._scan.values[tag] = values
        return from_values(vr, values), end

    def _binary(self, vr: str, position: int, end: int, path: TagPath) -> JsonDataset:
        if end - position > self._threshold:
            element: JsonDataset = {"vr": vr}
            self._scan.bulk.append((element, path))
            return element
        encoded = base64.b64encode(self._data[position:end]).decode("ascii")
        return {"vr": vr, "InlineBinary": encoded}

    def _character_set(self, raw: bytes) -> list[Any]:
        """A single term with one Python codec; anything else is pydicom's."""
        text = raw.decode("latin_1").rstrip(" \x00")
        codec = CODECS.get(text)
        if not text or codec is None or text != text.strip():
            raise _Outside
        self._codec = codec
        return [text]
