"""How a study or series row takes in one more of its instances: a merge.

Every instance of a study carries the study's attributes, and every instance of a
series the series', but not always alike: a presentation state or key object
selection has AccessionNumber empty (Type 2, PS3.3 C.7.2.1) and may lack
StudyDescription, StudyDate or ReferringPhysicianName altogether. Were a row to
take the last instance's attributes as they are, such an instance would erase
what the images said. So the row keeps, per attribute, the last value an instance
carried: an instance that carries a value replaces the stored one (a later
instance may correct it); one that lacks the attribute, or carries it empty (no
``Value``, or only empty values), leaves the stored one. A new row takes the first
instance's attributes as they are, empty ones included.

The match keys follow their attributes. A key's *sources* are the top-level
attributes it is derived from (``key_sources``): its own tag; a sequence's for
``SSSSSSSS.GGGGEEEE`` and for item keys; the date's and the time's for an
``A+B`` date-time pair. An instance *carries* the attributes it holds a value of
and the sources of the keys it comes with. A key whose sources it carried all is
the instance's; one whose sources it carried none of is kept; a pair it carried
half of is paired anew from the merged date and time keys, as
``dicomweb.records.match_keys`` pairs them (a pair neither side had keys for is
not made: both halves would have to come from different instances).

Both DICOM index adapters merge with these functions, so that they hold the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Any

from fhir_server.storage.dicom_port import Json, MatchKeys

_PAIR = "+"
_PATH = "."
# A pair's date part is a full date (``YYYYMMDD``), as ``match_keys`` requires.
_DATE_LENGTH = 8


def element_empty(element: Json) -> bool:
    """True when a DICOM JSON element holds no value: no ``Value``, an empty list, or
    only empty values (``""``, null, a person name or sequence item of empty parts)."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return False
    values = element.get("Value")
    if isinstance(values, list):
        return all(_blank(v) for v in values)
    return _blank(values)


def _blank(value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, dict):  # a person name's groups, or a sequence item's elements
        return all(
            element_empty(part) if isinstance(part, dict) else _blank(part)
            for part in value.values()
        )
    return False


def key_sources(key: str) -> tuple[str, ...]:
    """The top-level attributes (tags, ``GGGGEEEE``) a match key is derived from."""
    return tuple(key.split(_PATH, 1)[0].split(_PAIR))


def carried(attrs: Json, keys: MatchKeys) -> frozenset[str]:
    """The attributes an instance carries a value of: those of ``attrs`` that are not
    empty, and the sources of its match ``keys``."""
    held = {tag for tag, element in attrs.items() if not element_empty(element)}
    return frozenset(held.union(*(key_sources(k) for k, _ in keys)))


def canonical_keys(keys: Iterable[tuple[str, str]]) -> MatchKeys:
    """Match keys in one order, without repeats: rows compare by them."""
    return tuple(sorted(set(keys)))


def merge_attrs(stored: Json, new: Json, carries: Set[str]) -> Json:
    """``stored`` with each attribute of ``new`` that ``carries`` names replaced."""
    taken = {tag: element for tag, element in new.items() if tag in carries}
    return {**stored, **taken} if taken else stored


def merge_keys(stored: MatchKeys, new: MatchKeys, carries: Set[str]) -> MatchKeys:
    """The keys of a row holding ``stored`` once an instance carrying ``carries`` with
    ``new`` keys is merged into it (see the module docstring); canonical order."""
    merged: set[tuple[str, str]] = set()
    half: set[str] = set()  # pairs carried half of
    for key, value in stored:
        sources = key_sources(key)
        if not any(s in carries for s in sources):
            merged.add((key, value))
        elif not all(s in carries for s in sources):
            half.add(key)
    merged.update(new)
    for pair in half:
        date, time = key_sources(pair)
        dates = [v for k, v in merged if k == date and len(v) == _DATE_LENGTH]
        times = [v for k, v in merged if k == time]
        merged.update((pair, d + t) for d in dates for t in times)
    return canonical_keys(merged)


def merge(
    stored_attrs: Json, stored_keys: MatchKeys, new_attrs: Json, new_keys: MatchKeys
) -> tuple[Json, MatchKeys]:
    """The attributes and match keys of a row once one more instance is merged in."""
    carries = carried(new_attrs, new_keys)
    attrs = merge_attrs(stored_attrs, new_attrs, carries)
    return attrs, merge_keys(stored_keys, new_keys, carries)
