"""FHIR date, dateTime and instant text as ``[low, high)`` microsecond ranges.

A value covers the whole interval its precision implies: ``2024`` is the whole
year, ``2024-03-05T10:15`` the whole minute. Both the extractor (resource
values) and the parser (query values) use these functions, so the two sides
agree to the microsecond.
See https://hl7.org/fhir/R4/search.html#date and
https://hl7.org/fhir/R4/datatypes.html#dateTime
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fhir_server.search.values import DateRange

# Sentinels for open ends of a Period; far outside any real date, inside int64.
MIN_TIME = -(2**62)
MAX_TIME = 2**62

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of epoch microseconds."""
    return _EPOCH + timedelta(microseconds=micros)


def _tz(text: str | None) -> timezone:
    # No offset: the value is taken as UTC (the server's zone), see module doc.
    if text is None or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def parse_date_range(text: str) -> DateRange | None:
    """The range a FHIR date/dateTime/instant string covers, or None if malformed."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    g = match.groupdict()
    try:
        return _range(g)
    except (ValueError, OverflowError):
        return None


def _range(g: dict[str, str | None]) -> DateRange:
    year = int(g["y"] or 0)
    if g["m"] is None:
        low = datetime(year, 1, 1, tzinfo=UTC)
        return DateRange(to_micros(low), to_micros(low.replace(year=year + 1)))
    month = int(g["m"])
    if g["d"] is None:
        low = datetime(year, month, 1, tzinfo=UTC)
        ny, nm = _add_months(year, month, 1)
        return DateRange(to_micros(low), to_micros(datetime(ny, nm, 1, tzinfo=UTC)))
    day = int(g["d"])
    if g["H"] is None:
        low = datetime(year, month, day, tzinfo=UTC)
        return DateRange(to_micros(low), to_micros(low + timedelta(days=1)))
    tz = _tz(g["tz"])
    hour, minute = int(g["H"]), int(g["M"] or 0)
    low = datetime(year, month, day, hour, minute, tzinfo=tz)
    if g["S"] is None:
        return DateRange(to_micros(low), to_micros(low + timedelta(minutes=1)))
    low = low.replace(second=int(g["S"]))
    start = to_micros(low)
    fraction = g["f"]
    if fraction is None:
        return DateRange(start, start + 1_000_000)
    digits = min(len(fraction), 6)  # finer than microseconds is one microsecond
    start += int(fraction[:digits].ljust(6, "0"))
    return DateRange(start, start + 10 ** (6 - digits))


def date_values(value: Any) -> list[DateRange]:
    """The ranges of a date/dateTime/instant string, a Period or a Timing element."""
    if isinstance(value, str):
        found = parse_date_range(value)
        return [found] if found is not None else []
    if not isinstance(value, dict):
        return []
    if "start" in value or "end" in value:
        period = _period(value)
        return [period] if period is not None else []
    return _timing(value)


def _period(period: dict[str, Any]) -> DateRange | None:
    # An open end extends to the far past or future (R4 datatypes.html#Period).
    start = parse_date_range(period["start"]) if isinstance(period.get("start"), str) else None
    end = parse_date_range(period["end"]) if isinstance(period.get("end"), str) else None
    if start is None and end is None:
        return None
    if start is not None and end is not None and end.high <= start.low:
        # An end before the start breaks R4's per-1 invariant; cover both rather
        # than store an empty range every comparison would misjudge.
        return DateRange(min(start.low, end.low), max(start.high, end.high))
    return DateRange(start.low if start else MIN_TIME, end.high if end else MAX_TIME)


def _timing(timing: dict[str, Any]) -> list[DateRange]:
    """A Timing covers the span from its first event to its last, and its bounds."""
    ranges = [r for e in timing.get("event", ()) for r in date_values(e)]
    bounds = (timing.get("repeat") or {}).get("boundsPeriod")
    if isinstance(bounds, dict):
        ranges += date_values(bounds)
    if not ranges:
        return []
    return [DateRange(min(r.low for r in ranges), max(r.high for r in ranges))]
