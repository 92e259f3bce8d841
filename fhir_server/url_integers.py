"""Integers in request URLs and headers: ASCII decimal digits, and never beyond a
64-bit store.

FHIR's ``_count`` and version ids, and PS3.18's frame numbers, ``offset``,
``limit`` and ``quality``, are decimal digits. Python's ``int()`` is wider: it
takes other scripts' digits (``１``, ``٣``; ``str.isdigit()`` also passes
``²``, which ``int()`` then refuses), ``_`` separators and surrounding
whitespace, and builds integers of any size, which overflow SQLite's 64-bit
integers. ``url_integer`` takes only ``[0-9]+`` (after a sign where one is
allowed) and saturates at ``INTEGER_CEILING``: beyond any frame count, offset or
size the server can act on, yet still a 64-bit integer, so a huge offset simply
matches nothing.
"""

from __future__ import annotations

import re

INTEGER_CEILING = 2**62
_INTEGER = re.compile(r"([+-]?)0*([0-9]+)")
_CEILING_DIGITS = len(str(INTEGER_CEILING))


def url_integer(text: str, *, signed: bool = False) -> int | None:
    """``text`` as an integer when it is ASCII decimal digits (after ``+`` or ``-`` if
    ``signed``), its magnitude at most ``INTEGER_CEILING``; None when malformed."""
    found = _INTEGER.fullmatch(text)
    if found is None or (found[1] and not signed):
        return None
    digits = found[2]
    magnitude = INTEGER_CEILING
    if len(digits) <= _CEILING_DIGITS:  # else above it: no need to read them all
        magnitude = min(int(digits), INTEGER_CEILING)
    return -magnitude if found[1] == "-" else magnitude
