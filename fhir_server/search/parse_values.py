"""One search value text -> a value of the shared vocabulary, by parameter type.

Handles prefixes (``ge2024``), the escapes ``\\,`` ``\\|`` ``\\$`` ``\\\\`` and
the token/quantity/reference/composite forms. Raises InvalidSearch with a
message naming the parameter when a value is malformed.
See https://hl7.org/fhir/R4/search.html#ptypes and #escaping
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import Prefix
from fhir_server.search.dates import parse_date_range
from fhir_server.search.values import (
    DateRange,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    string_value,
)

PREFIXES: tuple[Prefix, ...] = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/.+)?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash; escapes are kept."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Remove the backslash of ``\\,`` ``\\|`` ``\\$`` ``\\\\``."""
    return re.sub(r"\\([,|$\\])", r"\1", text)


def split_prefix(text: str, allow: bool = True) -> tuple[Prefix, str]:
    """``ge2024`` -> ("ge", "2024"); no prefix means ``eq``."""
    head = text[:2]
    if allow and head in PREFIXES and len(text) > 2:
        return head, text[2:]
    return "eq", text


def _fail(param: str, text: str, what: str) -> InvalidSearch:
    return InvalidSearch(f"Invalid value {text!r} for search parameter {param!r}: {what}")


def parse_date(param: str, text: str, prefix: Prefix) -> DateRange:
    found = parse_date_range(unescape(text))
    if found is None:
        raise _fail(param, text, "expected a FHIR date, dateTime or instant")
    if prefix == "ap":
        # About 10% of the value's own span either side: "approximately" at its precision.
        margin = (found.high - found.low) // 10
        return DateRange(found.low - margin, found.high + margin)
    return found


def parse_decimal(param: str, text: str) -> Decimal:
    try:
        number = Decimal(unescape(text))
    except InvalidOperation as exc:
        raise _fail(param, text, "expected a number") from exc
    if not number.is_finite():
        raise _fail(param, text, "expected a finite number")
    if not -400 <= number.adjusted() <= 400:
        # beyond any float; Decimal arithmetic on it (the precision range) overflows
        raise _fail(param, text, "out of range")
    return number


def number_value(number: Decimal, prefix: Prefix) -> NumberValue:
    """A number with the range its precision implies (``ap``: within 10%)."""
    value = float(number)
    if prefix == "ap":
        spread = abs(value) * 0.1
        return NumberValue(value, value - spread, value + spread)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return NumberValue(value, float(number - half), float(number + half))


def parse_number(param: str, text: str, prefix: Prefix) -> NumberValue:
    return number_value(parse_decimal(param, text), prefix)


def parse_quantity(param: str, text: str, prefix: Prefix) -> QuantityValue:
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise _fail(param, text, "expected number|system|code")
    number = number_value(parse_decimal(param, parts[0]), prefix)
    system = unescape(parts[1]) or None if len(parts) == 3 else None
    code = unescape(parts[2]) or None if len(parts) == 3 else None
    return QuantityValue(number.value, number.low, number.high, system, code)


def parse_token(param: str, text: str) -> TokenValue:
    """``code``, ``system|code``, ``|code`` (no system) or ``system|`` (any code)."""
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        code = unescape(parts[0])
        if not code:
            raise _fail(param, text, "empty token")
        return TokenValue(None, code)
    if len(parts) != 2 or (not parts[0] and not parts[1]):
        raise _fail(param, text, "expected [system|]code")
    return TokenValue(unescape(parts[0]), unescape(parts[1]) or None)


def parse_of_type(param: str, text: str) -> TokenValue:
    """``:of-type=system|code|value`` of an Identifier's type and value."""
    parts = [unescape(p) for p in split_escaped(text, "|")]
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise _fail(param, text, "expected type-system|type-code|value")
    return TokenValue(parts[0] or None, parts[1], parts[2])


def parse_string(param: str, text: str) -> StringValue:
    value = string_value(unescape(text))
    if not value.exact:
        raise _fail(param, text, "empty string")
    return value


def parse_uri(param: str, text: str) -> UriValue:
    uri = unescape(text)
    if not uri:
        raise _fail(param, text, "empty uri")
    return UriValue(uri)


def parse_reference(param: str, text: str, type_modifier: str | None) -> ReferenceValue:
    """``Type/id``, a bare ``id`` (typed by a ``:Type`` modifier) or an absolute URL."""
    value = unescape(text)
    match = _REFERENCE.match(value)
    if match is not None:
        if type_modifier is not None and match["type"] != type_modifier:
            raise _fail(param, text, f"reference is not to a {type_modifier}")
        return ReferenceValue(match["type"], match["id"])
    if ":" in value:
        return ReferenceValue(None, None, url=value)
    if _ID.match(value) is None:
        raise _fail(param, text, "expected Type/id, an id or an absolute URL")
    return ReferenceValue(type_modifier, value)
