"""The one vocabulary of search values, shared by extraction (write side) and
parsing (read side), so index entries and query values compare directly.

Dates are half-open ranges ``[low, high)`` in integer microseconds since the
Unix epoch, UTC: a value at day precision covers the whole day.
See https://hl7.org/fhir/R4/search.html#date
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar

# Above every character, so ``[p, p + TOP)`` is the range of strings starting with p.
_TOP = "\U0010ffff"

_C = TypeVar("_C", bound=type)


def _pickled_by_fields(cls: _C) -> _C:
    """Pickle as ``cls(*fields)``. Index entries travel back from the worker
    processes that extract them (``worker_pool``); the default for frozen slot
    dataclasses restores each object through ``dataclasses.fields()``, which cost
    the receiving process more than the extraction it saved."""
    names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    fields = attrgetter(*names)  # one C call; a tuple when there are several

    def reduce(self: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, fields(self) if len(names) > 1 else (fields(self),)

    cls.__reduce__ = reduce  # type: ignore[assignment]
    return cls


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class StringValue:
    """A string normalised for case and accents (``normalized``) and as written (``exact``)."""

    normalized: str
    exact: str


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class TokenValue:
    """A coded value. ``system`` None means "no system given"; "" means "explicitly none"."""

    system: str | None
    code: str | None
    text: str | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class DateRange:
    """``[low, high)`` in microseconds since the epoch (UTC)."""

    low: int
    high: int


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class NumberValue:
    """A decimal with the range its precision implies (``100`` covers [99.5, 100.5))."""

    value: float
    low: float
    high: float


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class QuantityValue:
    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference as type + id (relative or resolved local absolute) or an external URL."""

    type: str | None
    id: str | None
    url: str | None = None
    version: str | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class CompositeValue:
    components: tuple[Value, ...]


Value = (
    StringValue
    | TokenValue
    | DateRange
    | NumberValue
    | QuantityValue
    | ReferenceValue
    | UriValue
    | CompositeValue
)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One extracted search value of a resource, under the parameter's code."""

    param: str
    value: Value


def normalize_text(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded.

    See https://hl7.org/fhir/R4/search.html#string
    """
    if text.isascii():  # no accents to drop; casefold is lower() for ASCII
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def string_value(text: str) -> StringValue:
    return StringValue(normalize_text(text), text)


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string above every string that starts with ``prefix``."""
    return prefix + _TOP


def derived_param(param: str, modifier: str) -> str:
    """The index name of values searched with a modifier rather than the value itself.

    ``ref:identifier`` holds a reference's ``Reference.identifier`` as a token;
    ``identifier:of-type`` holds ``TokenValue(type.system, type.code, text=value)``.
    """
    return f"{param}:{modifier}"
