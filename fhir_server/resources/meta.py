"""Server-owned parts of a stored resource: id, meta.versionId, meta.lastUpdated."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1024)
def format_instant(moment: datetime) -> str:
    """An R4 ``instant`` (https://hl7.org/fhir/R4/datatypes.html#instant). Remembered:
    a write formats its moment for the body, the headers and the audit record."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def stamp(resource: dict[str, Any], id: str, version: int, moment: datetime) -> dict[str, Any]:
    """A copy of ``resource`` with the server's id and meta; other meta (tags,
    profiles, security labels, source) is kept as sent."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(moment)
    stamped = {"resourceType": resource["resourceType"], "id": id}
    stamped.update(resource)
    stamped["id"] = id  # keeps its place, second
    stamped.pop("meta", None)
    stamped["meta"] = meta  # last
    return stamped
