"""Index entries as plain tuples, for the trip between processes.

A resource's index travels from the worker process that extracts it
(``resources.worker_pool``) to the server, which stores it. As objects, the
nine entries of an average resource of a Bundle of Patients and orders
(eighteen frozen dataclasses) cost ~35 µs to pickle and unpickle, half of it
rebuilding them in the server's process, on a thread that holds the GIL
against the event loop; as tuples of strings and numbers ~3 µs.
``PackedIndex`` holds the tuples and turns them back into ``IndexEntry``
objects only if something asks for them (a ``patient/`` token's compartment
check, the MongoDB adapter); the SQLite adapter makes its rows from the tuples
directly (``search_sql.index_rows``).

A packed value is ``(kind, *fields)``: ``kind`` is the position of its type in
``VALUE_TYPES`` and the fields are the dataclass fields in order (a composite
holds its packed components). A packed entry is ``(param, kind, *fields)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any, overload

from fhir_server.search.values import (
    CompositeValue,
    DateRange,
    IndexEntry,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    Value,
)

VALUE_TYPES: tuple[type, ...] = (
    StringValue,
    TokenValue,
    DateRange,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    UriValue,
    CompositeValue,
)
STRING, TOKEN, DATE, NUMBER, QUANTITY, REFERENCE, URI, COMPOSITE = range(len(VALUE_TYPES))

PackedValue = tuple[Any, ...]
PackedEntry = tuple[Any, ...]


def _fields_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    if len(names) == 1:
        (name,) = names
        return lambda value: (getattr(value, name),)
    return attrgetter(*names)


# a value's kind and its fields (a tuple), by the value's exact type
_PACKERS: dict[type, tuple[int, Callable[[Any], tuple[Any, ...]]]] = {
    cls: (kind, _fields_of(cls))
    for kind, cls in enumerate(VALUE_TYPES)
    if cls is not CompositeValue
}


def pack_value(value: Value) -> PackedValue:
    """``value`` as ``(kind, *fields)``."""
    if type(value) is CompositeValue:
        return (COMPOSITE, tuple(pack_value(part) for part in value.components))
    kind, fields = _PACKERS[type(value)]
    return (kind, *fields(value))


def unpack_value(packed: PackedValue) -> Value:
    kind = packed[0]
    if kind == COMPOSITE:
        return CompositeValue(tuple(unpack_value(part) for part in packed[1]))
    value: Value = VALUE_TYPES[kind](*packed[1:])
    return value


def pack_entries(entries: Sequence[IndexEntry]) -> tuple[PackedEntry, ...]:
    """``entries`` as ``(param, kind, *fields)`` tuples (the packed form of a
    ``PackedIndex``, returned as it is)."""
    if isinstance(entries, PackedIndex):
        return entries.packed
    packed: list[PackedEntry] = []
    for entry in entries:
        value = entry.value
        packer = _PACKERS.get(type(value))
        if packer is None:
            packed.append((entry.param, *pack_value(value)))
        else:
            kind, fields = packer
            packed.append((entry.param, kind, *fields(value)))
    return tuple(packed)


def unpack_entry(packed: PackedEntry) -> IndexEntry:
    return IndexEntry(packed[0], unpack_value(packed[1:]))


class PackedIndex(Sequence[IndexEntry]):
    """A resource's index entries, held packed (see the module docstring)."""

    __slots__ = ("_entries", "packed")

    def __init__(self, packed: tuple[PackedEntry, ...]) -> None:
        self.packed = packed
        self._entries: list[IndexEntry] | None = None

    @classmethod
    def of(cls, entries: Sequence[IndexEntry]) -> PackedIndex:
        return cls(pack_entries(entries))

    def _unpacked(self) -> list[IndexEntry]:
        if self._entries is None:
            self._entries = [unpack_entry(p) for p in self.packed]
        return self._entries

    @overload
    def __getitem__(self, i: int) -> IndexEntry: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[IndexEntry]: ...

    def __getitem__(self, i: int | slice) -> IndexEntry | Sequence[IndexEntry]:
        return self._unpacked()[i]

    def __iter__(self) -> Iterator[IndexEntry]:
        return iter(self._unpacked())

    def __len__(self) -> int:
        return len(self.packed)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedIndex):
            return self.packed == other.packed
        if isinstance(other, Sequence):
            return self._unpacked() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list: compared, not hashed

    def __repr__(self) -> str:
        return f"PackedIndex({self._unpacked()!r})"

    def __reduce__(self) -> tuple[type, tuple[tuple[PackedEntry, ...]]]:
        return PackedIndex, (self.packed,)
