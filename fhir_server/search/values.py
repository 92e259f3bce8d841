"""The one vocabulary of search values, shared by extraction (write side) and
parsing (read side), so index entries and query values compare directly.

Dates are half-open ranges ``[low, high)`` in integer microseconds since the
Unix epoch, UTC: a value at day precision covers the whole day.
See https://hl7.org/fhir/R4/search.html#date
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Above every character, so ``[p, p + TOP)`` is the range of strings starting with p.
_TOP = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class StringValue:
    """A string normalised for case and accents (``normalized``) and as written (``exact``)."""

    normalized: str
    exact: str


@dataclass(frozen=True, slots=True)
class TokenValue:
    """A coded value. ``system`` None means "no system given"; "" means "explicitly none"."""

    system: str | None
    code: str | None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class DateRange:
    """``[low, high)`` in microseconds since the epoch (UTC)."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A decimal with the range its precision implies (``100`` covers [99.5, 100.5))."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class QuantityValue:
    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference as type + id (relative or resolved local absolute) or an external URL."""

    type: str | None
    id: str | None
    url: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


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
