"""Whether one indexed value satisfies one comparison: the oracle's value rules.

Dates are ranges ``[low, high)``; ``eq`` means the indexed range lies within
the query range, ``gt``/``lt`` that it reaches beyond it, ``ge``/``le`` either,
``sa``/``eb`` that it lies wholly after/before, ``ap`` that it overlaps the
(parser-widened) range. Indexed numbers and quantities are points.
See https://hl7.org/fhir/R4/search.html#prefix
"""

from __future__ import annotations

from fhir_server.search.ast import Compare
from fhir_server.search.values import (
    DateRange,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    Value,
)


def value_matches(node: Compare, value: Value) -> bool:
    """Whether the indexed ``value`` satisfies ``node``."""
    want = node.value
    if isinstance(want, StringValue) and isinstance(value, StringValue):
        return _string(want, value, node.modifier)
    if isinstance(want, TokenValue) and isinstance(value, TokenValue):
        return _token(want, value, node.modifier)
    if isinstance(want, DateRange) and isinstance(value, DateRange):
        return date_matches(value, want, node.prefix)
    if isinstance(want, QuantityValue) and isinstance(value, QuantityValue):
        return _quantity(want, value, node.prefix)
    if isinstance(want, NumberValue) and isinstance(value, NumberValue):
        return number_matches(value.value, want, node.prefix)
    if isinstance(want, ReferenceValue) and isinstance(value, ReferenceValue):
        return _reference(want, value)
    if isinstance(want, UriValue) and isinstance(value, UriValue):
        return _uri(want, value, node.modifier)
    return False


def _string(want: StringValue, value: StringValue, modifier: str | None) -> bool:
    if modifier == "exact":
        return value.exact == want.exact
    if modifier == "contains":
        return want.normalized in value.normalized
    return value.normalized.startswith(want.normalized)


def _token(want: TokenValue, value: TokenValue, modifier: str | None) -> bool:
    if modifier == "text":
        return value.text is not None and value.text.startswith(want.text or "")
    if modifier == "of-type":
        return (value.system, value.code, value.text) == (want.system, want.code, want.text)
    if want.code is None and want.system is None:
        return False
    if want.code is not None and value.code != want.code:
        return False
    if want.system == "":
        return value.system is None
    return want.system is None or value.system == want.system


def date_matches(value: DateRange, want: DateRange, prefix: str) -> bool:
    within = value.low >= want.low and value.high <= want.high
    if prefix == "eq":
        return within
    if prefix == "ne":
        return not within
    if prefix == "gt":
        return value.high > want.high
    if prefix == "lt":
        return value.low < want.low
    if prefix == "ge":
        return value.high > want.high or within
    if prefix == "le":
        return value.low < want.low or within
    if prefix == "sa":
        return value.low >= want.high
    if prefix == "eb":
        return value.high <= want.low
    return value.low < want.high and value.high > want.low  # ap: overlap


def number_matches(value: float, want: NumberValue, prefix: str) -> bool:
    if prefix == "eq":
        return want.low <= value < want.high
    if prefix == "ne":
        return not want.low <= value < want.high
    if prefix == "ap":
        return want.low <= value <= want.high
    if prefix in ("gt", "sa"):
        return value > want.value
    if prefix in ("lt", "eb"):
        return value < want.value
    if prefix == "ge":
        return value >= want.value
    return value <= want.value  # le


def _quantity(want: QuantityValue, value: QuantityValue, prefix: str) -> bool:
    if not number_matches(value.value, NumberValue(want.value, want.low, want.high), prefix):
        return False
    if want.system is not None:
        return value.system == want.system and want.code in (None, value.code)
    if want.code is not None:
        return want.code in (value.code, value.unit)
    return True


def _reference(want: ReferenceValue, value: ReferenceValue) -> bool:
    if want.url is not None:
        return value.url == want.url
    if want.id is None or value.id != want.id:
        return False
    return want.type is None or value.type == want.type


def _uri(want: UriValue, value: UriValue, modifier: str | None) -> bool:
    if modifier == "below":
        return value.uri.startswith(want.uri)
    if modifier == "above":
        return want.uri.startswith(value.uri)
    return value.uri == want.uri
