"""The QIDO-RS matching rules as a pure evaluator over DICOM JSON records.

Never the production path (backends compile ``QidoQuery`` matchers into their
own queries, served by indexes); this is the independent oracle the backend
tests compare against. A record is one entity's DICOM JSON (PS3.18 §F.2),
e.g. a study's attributes merged with its aggregates.

Rules (PS3.4 C.2.2.2, as PS3.18 §10.6.1.3 applies them): an attribute with no
value matches only universal matching, which an empty value or one of only
``*`` asks for; multi-valued attributes match if any value matches; person
names compare case-insensitively, component group by component group,
ignoring trailing empty components; the keys within one sequence match if one
item matches them all; a date range with a time range of the same moment
(StudyDate and StudyTime, ...) matches the moments from the first date's first
time to the last date's last time, unless either is a single value or the
dates are one day (where that reading and the separate one agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dicomweb.qido import (
    NUMERIC_VRS,
    RANGE_VRS,
    WILDCARD_VRS,
    Match,
    Matcher,
    QidoQuery,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    date_time_pairs,
    normalise_bound,
    pn_normal,
)

Record = Mapping[str, Any]
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def matches(query: QidoQuery, record: Record) -> bool:
    """True if ``record`` satisfies every match key of ``query`` (PS3.18 §10.6.1.3)."""
    pairs = _moment_pairs(query)
    paired = {m.path for pair in pairs for m in pair}
    sequences: dict[int, list[Match]] = {}
    for m in query.matches:
        if len(m.path) > 1:
            sequences.setdefault(m.path[0], []).append(m)
    return (
        all(_match_moment(date, time, record) for date, time in pairs)
        and all(
            match_key(m, record) for m in query.matches if len(m.path) == 1 and m.path not in paired
        )
        and all(_match_one_item(keys, record) for keys in sequences.values())
    )


def _is_universal(match: Match) -> bool:
    m = match.matcher
    if isinstance(m, Universal):
        return True
    return isinstance(m, Wildcard) and match.vr in WILDCARD_VRS and set(m.pattern) == {"*"}


def _match_one_item(keys: list[Match], record: Record) -> bool:
    """The keys of one sequence, all matched by the same item (PS3.4 C.2.2.2.6)."""
    wanted = [Match(m.path[1:], m.vr, m.matcher) for m in keys if not _is_universal(m)]
    if not wanted:
        return True
    items = (record.get(f"{keys[0].path[0]:08X}") or {}).get("Value") or []
    return any(
        all(match_key(m, item) for m in wanted) for item in items if isinstance(item, Mapping)
    )


def _moment_pairs(query: QidoQuery) -> list[tuple[Match, Match]]:
    """The (date, time) keys matched as one datetime range (PS3.4 C.2.2.2.5)."""
    by_path = {m.path: m for m in query.matches}
    found = []
    for level in query.levels:
        for date_tag, time_tag in date_time_pairs(level):
            date, time = by_path.get((date_tag,)), by_path.get((time_tag,))
            if date is None or time is None:
                continue
            d, t = date.matcher, time.matcher
            if not (isinstance(d, Range) and isinstance(t, Range)) or d.single or t.single:
                continue
            if d.low is None or d.low != d.high:
                found.append((date, time))
    return found


def _match_moment(date: Match, time: Match, record: Record) -> bool:
    d, t = date.matcher, time.matcher
    assert isinstance(d, Range) and isinstance(t, Range)
    low = None if d.low is None else d.low + (t.low or "000000.000000")
    high = None if d.high is None else d.high + (t.high or "235959.999999")
    days = _values(record.get(f"{date.path[0]:08X}"), "DA")
    times = _values(record.get(f"{time.path[0]:08X}"), "TM")
    for day in days:
        for moment in times:
            point = str(day) + normalise_bound("TM", str(moment), high=False)
            if (low is None or low <= point) and (high is None or point <= high):
                return True
    return False


def filter_records(query: QidoQuery, records: Sequence[Record]) -> list[Record]:
    """The page of matching records: ``offset`` skipped, at most ``limit`` (PS3.18 §8.3.4.4)."""
    found = [r for r in records if matches(query, r)]
    return found[query.offset : query.offset + query.limit]


def match_key(match: Match, record: Record) -> bool:
    """Evaluate one match key, descending into a sequence for a dotted path."""
    if _is_universal(match):
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
