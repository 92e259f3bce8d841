"""Whether a DA, TM or DT query value names a moment that exists (PS3.5 Table 6.2-1).

``qido`` checks a value's shape (digits in the right places); this checks what
the digits say: month 01-12, a day the month has (29 February only in a leap
year), hour 00-23, minute 00-59, second 00-60 (60: a leap second), and a DT's
UTC offset ``&ZZXX`` within -1200 to +1400 with minutes 00-59. A query value
that names no moment, ``StudyDate=20241301`` or ``StudyTime=2561``, is a syntax
error in the query (PS3.18 §8.3.4: 400), not a value that matches nothing.
"""

from __future__ import annotations

import calendar

_UTC_OFFSET_MINUTES = (-12 * 60, 14 * 60)


def moment_fault(vr: str, value: str) -> str | None:
    """Why a well-shaped ``vr`` value (``qido._SHAPES``, TM without its colons) names
    no moment, or None when it does."""
    if vr == "DA":
        return _date_fault(value)
    if vr == "TM":
        return _time_fault(value)
    moment, offset = value, ""
    if len(value) > 5 and value[-5] in "+-":
        moment, offset = value[:-5], value[-5:]
    return _date_fault(moment[:8]) or _time_fault(moment[8:]) or _offset_fault(offset)


def _date_fault(text: str) -> str | None:
    """``YYYY``, ``YYYYMM`` or ``YYYYMMDD`` (the first two only as a DT's start)."""
    if len(text) < 6:
        return None
    year, month = int(text[:4]), int(text[4:6])
    if not 1 <= month <= 12:
        return f"month {text[4:6]} is not 01-12"
    if len(text) < 8:
        return None
    last = calendar.monthrange(year, month)[1]
    if not 1 <= int(text[6:8]) <= last:
        return f"day {text[6:8]} is not 01-{last} in {text[:4]}-{text[4:6]}"
    return None


def _time_fault(text: str) -> str | None:
    """``HH``, ``HHMM``, ``HHMMSS`` or ``HHMMSS.F`` to ``HHMMSS.FFFFFF``; empty is no time."""
    for start, name, most in ((0, "hour", 23), (2, "minute", 59), (4, "second", 60)):
        part = text[start : start + 2]
        if len(part) == 2 and int(part) > most:
            return f"{name} {part} is not 00-{most}"
    return None


def _offset_fault(text: str) -> str | None:
    """``&ZZXX``, the offset from UTC of a DT; empty is none."""
    if not text:
        return None
    hours, minutes = int(text[1:3]), int(text[3:5])
    total = (-1 if text[0] == "-" else 1) * (hours * 60 + minutes)
    if minutes > 59 or not _UTC_OFFSET_MINUTES[0] <= total <= _UTC_OFFSET_MINUTES[1]:
        return f"UTC offset {text} is not -1200 to +1400"
    return None
