"""The QIDO-RS matching rules as a pure evaluator over DICOM JSON records.

Never the production path (backends compile ``QidoQuery`` matchers into their
own queries, served by indexes); this is the independent oracle the backend
tests compare against. A record is one entity's DICOM JSON (PS3.18 §F.2),
e.g. a study's attributes merged with its aggregates.

Rules (PS3.4 C.2.2.2, as PS3.18 §10.6.1.3 applies them): an attribute with no
value matches only universal matching; multi-valued attributes match if any
value matches; person names compare case-insensitively, component group by
component group, ignoring trailing empty components; a sequence key matches
if any item matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dicomweb.qido import (
    NUMERIC_VRS,
    RANGE_VRS,
    Match,
    Matcher,
    QidoQuery,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    normalise_bound,
    pn_normal,
)

Record = Mapping[str, Any]
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def matches(query: QidoQuery, record: Record) -> bool:
    """True if ``record`` satisfies every match key of ``query`` (PS3.18 §10.6.1.3)."""
    return all(match_key(m, record) for m in query.matches)


def filter_records(query: QidoQuery, records: Sequence[Record]) -> list[Record]:
    """The page of matching records: ``offset`` skipped, at most ``limit`` (PS3.18 §8.3.4.4)."""
    found = [r for r in records if matches(query, r)]
    return found[query.offset : query.offset + query.limit]


def match_key(match: Match, record: Record) -> bool:
    """Evaluate one match key, descending into a sequence for a dotted path."""
    if isinstance(match.matcher, Universal):
        return True
    head = f"{match.path[0]:08X}"
    if len(match.path) > 1:
        items = (record.get(head) or {}).get("Value") or []
        rest = Match(match.path[1:], match.vr, match.matcher)
        return any(match_key(rest, item) for item in items if isinstance(item, Mapping))
    values = _values(record.get(head), match.vr)
    return any(match_value(match.vr, match.matcher, v) for v in values)


def _values(element: Mapping[str, Any] | None, vr: str) -> list[Any]:
    raw = [v for v in (element or {}).get("Value") or [] if v is not None]
    if vr != "PN":
        return raw
    return [v if isinstance(v, str) else _pn_groups(v) for v in raw]


def _pn_groups(value: Mapping[str, str]) -> str:
    return "=".join(value.get(g, "") for g in _PN_GROUPS).rstrip("=")


def match_value(vr: str, matcher: Matcher, value: Any) -> bool:
    """Does one stored value satisfy the matcher? (PS3.4 C.2.2.2.1-5)."""
    if isinstance(matcher, Universal):
        return True
    if vr == "PN":
        return _match_person_name(matcher, str(value))
    if isinstance(matcher, Range):
        return vr in RANGE_VRS and _in_range(vr, matcher, str(value))
    if isinstance(matcher, ValueList):
        return str(value) in matcher.values
    if isinstance(matcher, Wildcard):
        return matcher.regex(ignore_case=False).fullmatch(str(value)) is not None
    return _equal(vr, matcher.value, value)


def _equal(vr: str, wanted: str, value: Any) -> bool:
    if vr in NUMERIC_VRS:
        try:
            return float(wanted) == float(value)
        except (TypeError, ValueError):
            return False
    return wanted == str(value)


def _in_range(vr: str, matcher: Range, value: str) -> bool:
    point = normalise_bound(vr, value, high=False)
    if matcher.low is not None and point < matcher.low:
        return False
    return matcher.high is None or point <= matcher.high


def _match_person_name(matcher: Matcher, value: str) -> bool:
    """Case-insensitive PN matching against each component group of the value."""
    groups = [pn_normal(g) for g in value.split("=")]
    if isinstance(matcher, Wildcard):
        pattern = Wildcard(pn_normal(matcher.pattern)).regex(ignore_case=True)
        return any(pattern.fullmatch(g) for g in groups if g)
    if isinstance(matcher, SingleValue):
        wanted = [pn_normal(g) for g in matcher.value.split("=")]
        if len(wanted) > 1:
            return all(w == "" or w == g for w, g in zip(wanted, groups + [""] * 3, strict=False))
        return wanted[0] in groups
    if isinstance(matcher, ValueList):
        return any(pn_normal(v) in groups for v in matcher.values)
    return False
