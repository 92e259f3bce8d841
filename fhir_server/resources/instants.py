"""Parsing FHIR date/dateTime/instant values given as request parameters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fhir_server.errors import InvalidRequest

# https://hl7.org/fhir/R4/datatypes.html#dateTime
_DATETIME = re.compile(
    r"(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def parse_moment(name: str, text: str) -> datetime:
    """The earliest instant of a FHIR dateTime at its precision (UTC if no zone)."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(f"{name}: {text!r} is not a FHIR date or dateTime")
    g = match.groupdict()
    try:
        fraction = g["f"] or ""
        micros = int((fraction[1:] + "000000")[:6]) if fraction else 0
        moment = datetime(
            int(g["y"]),
            int(g["m"] or 1),
            int(g["d"] or 1),
            int(g["H"] or 0),
            int(g["M"] or 0),
            int(g["S"] or 0),
            micros,
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {text!r} is not a valid date: {exc}") from None
    tz = g["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hours, minutes = int(tz[1:3]), int(tz[4:6])
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    return moment
