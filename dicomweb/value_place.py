"""Where one value lies in a Part-10 file, found by reading element headers only.

pydicom leaves a large top-level value on disk when asked (``defer_size``), but reads
every sequence whole, so a value inside one (a Holter recording's WaveformData, in a
WaveformSequence item) would come into memory to be located. ``place`` walks the
file instead: element headers, items and delimiters, skipping each value by its
length, descending only into the items on the way to the value (PS3.5 §7.1, §7.5):
explicit or implicit VR, little or big endian, defined or undefined lengths, and
undefined-length UN holding implicit VR little endian items (PS3.5 §6.2.2). Memory is
a header's few bytes at a time, whatever the file holds.

A deflated data set has no value at an offset of the file; its caller reads it some
other way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dicomweb.header_scan import ITEM, ITEM_END, LONG_VRS, SEQUENCE_END, UNDEFINED
from dicomweb.transfer_syntax import EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

TagPath = tuple[int, ...]
_PREAMBLE_AND_MAGIC = 132
_META_GROUP = 0x0002
_ITEM_TAGS = frozenset({ITEM, ITEM_END, SEQUENCE_END})
_WAY_DOWN = 64  # nested items deeper than this are not a real file's


class NoValue(KeyError):
    """The path names no value of defined length in the file."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a data set's elements are written."""

    implicit: bool
    little: bool


_META = Encoding(implicit=False, little=True)
_UN_ITEMS = Encoding(implicit=True, little=True)  # PS3.5 §6.2.2: an undefined-length UN


@dataclass(frozen=True, slots=True)
class _Header:
    tag: int
    vr: str | None  # None: implicit VR
    length: int
    value_at: int


def place(fp: BinaryIO, path: TagPath, transfer_syntax: str) -> tuple[int, int]:
    """The offset and length in ``fp`` (a Part-10 file) of the value at ``path``
    (tag, item index, tag, ...; item indexes from 0). ``NoValue`` when the file holds
    none there, or only one of undefined length (encapsulated pixel data)."""
    found = places(fp, [path], transfer_syntax)
    if path not in found:
        raise NoValue(path)
    return found[path]


def places(
    fp: BinaryIO, paths: Sequence[TagPath], transfer_syntax: str
) -> dict[TagPath, tuple[int, int]]:
    """``place`` of each of ``paths`` that the file holds; its header is read once."""
    encoding = Encoding(
        implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        little=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
    )
    walk = _Walk(fp)
    try:
        start = walk.past_meta()
    except NoValue:
        return {}
    found: dict[TagPath, tuple[int, int]] = {}
    for path in paths:
        if len(path) % 2 == 0 or len(path) > 2 * _WAY_DOWN:
            continue
        try:
            found[path] = walk.find(path, start, None, encoding)
        except NoValue:
            continue
    return found


class _Walk:
    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp

    def past_meta(self) -> int:
        """Where the data set starts: after the preamble, ``DICM`` and group 0002."""
        self._fp.seek(_PREAMBLE_AND_MAGIC - 4)
        if self._fp.read(4) != b"DICM":
            raise NoValue("not a Part-10 file")
        at = _PREAMBLE_AND_MAGIC
        while True:
            head = self._header(at, _META)
            if head is None or head.tag >> 16 != _META_GROUP:
                return at
            at = self._past(head, _META, 0)

    def find(self, path: TagPath, at: int, end: int | None, encoding: Encoding) -> tuple[int, int]:
        """``path`` in the data set from ``at`` to ``end`` (None: an item delimiter or
        the file's end)."""
        while end is None or at < end:
            head = self._header(at, encoding)
            if head is None or head.tag == ITEM_END:
                break
            if head.tag > path[0]:  # elements are in ascending order (PS3.5 §7.1)
                break
            if head.tag < path[0]:
                at = self._past(head, encoding, 0)
                continue
            if len(path) == 1:
                if head.length == UNDEFINED:
                    raise NoValue(path)
                return head.value_at, head.length
            return self._in_item(path, head, encoding)
        raise NoValue(path)

    def _in_item(self, path: TagPath, head: _Header, encoding: Encoding) -> tuple[int, int]:
        """``path[2:]`` in item ``path[1]`` of the sequence ``head``."""
        inner = _UN_ITEMS if head.vr == "UN" else encoding
        at = head.value_at
        end = None if head.length == UNDEFINED else head.value_at + head.length
        for index in range(path[1] + 1):
            item = self._header(at, inner)
            if item is None or item.tag != ITEM or (end is not None and at >= end):
                raise NoValue(path)
            if index == path[1]:
                stop = None if item.length == UNDEFINED else item.value_at + item.length
                return self.find(path[2:], item.value_at, stop, inner)
            at = self._past(item, inner, 1)
        raise NoValue(path)  # (not reached: the loop returns at the last index)

    def _past(self, head: _Header, encoding: Encoding, depth: int) -> int:
        """Where the element (or item) ``head`` ends."""
        if head.length != UNDEFINED:
            return head.value_at + head.length
        if depth > _WAY_DOWN:
            raise NoValue("nested too deep")
        # items of a sequence (or fragments) up to the sequence delimiter; an item's
        # elements up to the item delimiter
        inner = _UN_ITEMS if head.vr == "UN" else encoding
        at = head.value_at
        while True:
            part = self._header(at, inner)
            if part is None:
                raise NoValue("the file ends inside a value")
            if part.tag in (SEQUENCE_END, ITEM_END):
                return part.value_at
            at = self._past(part, inner, depth + 1)

    def _header(self, at: int, encoding: Encoding) -> _Header | None:
        """The element header at ``at``; None at the end of the file."""
        self._fp.seek(at)
        raw = self._fp.read(12)
        if len(raw) < 8:
            return None
        order = "<" if encoding.little else ">"
        group, element = struct.unpack(f"{order}HH", raw[:4])
        tag = group << 16 | element
        if tag in _ITEM_TAGS or encoding.implicit:
            (length,) = struct.unpack(f"{order}I", raw[4:8])
            return _Header(tag, None, length, at + 8)
        vr = raw[4:6].decode("latin-1")
        if vr in LONG_VRS:
            if len(raw) < 12:
                return None
            (length,) = struct.unpack(f"{order}I", raw[8:12])
            return _Header(tag, vr, length, at + 12)
        (length,) = struct.unpack(f"{order}H", raw[6:8])
        return _Header(tag, vr, length, at + 8)
