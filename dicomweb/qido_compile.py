"""QIDO-RS on the DICOM index: ``QidoQuery`` → ``DicomQuery``, matches → DICOM JSON.

Query values are normalised with the same functions ``records`` applies to
stored values, so the index compares plain strings. Results carry every
attribute PS3.18 Tables 10.6.3-3/4/5 require at the levels searched, the
aggregates the index keeps (ModalitiesInStudy and the counts) and a
RetrieveURL, filtered by ``includefield`` unless ``includefield=all``; one
asked for (required, matched or included) that a result has no value for is
there empty (``result_shape``).

A StudyDate range with a StudyTime range (and the like, ``date_time_pairs``)
is one range on the pair's datetime key (PS3.4 C.2.2.2.5); two or more keys in
one sequence add a filter on its item key, so they match in the same item
(PS3.4 C.2.2.2.6), beside their own keys' filters, which the index serves.

Known simplifications: a PN query value with several component groups
(``Alphabetic=Ideographic``) matches on its first non-empty group; a sequence
key matched by a value list or a range is not tied to the item of the others
(no current sequence key is CS, UI or a date).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dicomweb.dicom_json import dictionary_vr
from dicomweb.qido import (
    NUMERIC_VRS,
    Level,
    Match,
    QidoQuery,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    attribute_level,
    combined_range,
    date_time_pairs,
    pn_normal,
    return_attributes,
    sequence_keys,
)
from dicomweb.records import (
    ITEM_SEPARATOR,
    TRANSFER_SYNTAX_UID,
    datetime_key,
    item_key,
    key_name,
    number_normal,
)
from fhir_server.storage.dicom_port import DicomMatch, DicomQuery, Json, KeyFilter

Path = tuple[int, ...]

INSTANCE_AVAILABILITY = "00080056"
MODALITIES_IN_STUDY = "00080061"
RETRIEVE_URL = "00081190"
AVAILABLE_TRANSFER_SYNTAX = "00083002"
STUDY_RELATED_SERIES = "00201206"
STUDY_RELATED_INSTANCES = "00201208"
SERIES_RELATED_INSTANCES = "00201209"
ONLY_IF_PRESENT = frozenset({0x00080201})  # TimezoneOffsetFromUTC


@dataclass(frozen=True)
class Scope:
    """Where the search URL points: /studies/{study}/series/{series}/instances etc."""

    study_uid: str | None = None
    series_uid: str | None = None


def _query_value(vr: str, value: str) -> str:
    if vr == "PN":
        groups = [g for g in value.split("=") if g]
        return pn_normal(groups[0] if groups else "")
    if vr in NUMERIC_VRS:
        return number_normal(value)
    return value


def key_filter(match: Match) -> KeyFilter | None:
    """One match key as an index filter; None for universal matching (PS3.4 C.2.2.2)."""
    m, vr, key = match.matcher, match.vr, key_name(match.path)
    if isinstance(m, Universal):
        return None
    if isinstance(m, Range):
        return KeyFilter(key, "range", (m.low or "", m.high or ""))
    if isinstance(m, ValueList):
        return KeyFilter(key, "any", tuple(_query_value(vr, v) for v in m.values))
    if isinstance(m, Wildcard):
        pattern = pn_normal(m.pattern) if vr == "PN" else m.pattern
        return KeyFilter(key, "glob", (pattern,))
    assert isinstance(m, SingleValue)
    return KeyFilter(key, "eq", (_query_value(vr, m.value),))


def datetime_filters(query: QidoQuery) -> Iterator[tuple[Level, KeyFilter, set[Path]]]:
    """Date and time ranges matched as one datetime range: level, filter, the two keys."""
    matchers = {m.path: m.matcher for m in query.matches}
    for level in query.levels:
        for date, time in date_time_pairs(level):
            d, t = matchers.get((date,)), matchers.get((time,))
            if not (isinstance(d, Range) and isinstance(t, Range)):
                continue
            if (moments := combined_range(d, t)) is not None:
                bounds = (moments.low or "", moments.high or "")
                yield (
                    level,
                    KeyFilter(datetime_key(date, time), "range", bounds),
                    {(date,), (time,)},
                )


def item_filters(query: QidoQuery) -> Iterator[tuple[Level, KeyFilter]]:
    """For each sequence with two or more keys: its items must match them all at once."""
    for level in query.levels:
        for sequence, paths in sequence_keys(level).items():
            keys = {m.path[1:]: m for m in query.matches if m.path[0] == sequence}
            if sum(not isinstance(m.matcher, Universal) for m in keys.values()) < 2:
                continue
            patterns = [_item_pattern(keys.get(path)) for path in paths]
            if all(p is not None for p in patterns):
                pattern = ITEM_SEPARATOR.join(p for p in patterns if p is not None)
                yield level, KeyFilter(item_key(sequence), "glob", (pattern,))


def _item_pattern(match: Match | None) -> str | None:
    """One item key's part of the item glob; None where a glob cannot say it."""
    compiled = None if match is None else key_filter(match)
    if compiled is None:
        return "*"
    value = compiled.values[0]
    if compiled.op == "glob" or (compiled.op == "eq" and not {"*", "?"} & set(value)):
        return value
    return None


def compile_query(query: QidoQuery, scope: Scope, patient_ref: str | None) -> DicomQuery:
    """The index query of a parsed QIDO-RS search (PS3.18 §10.6.1)."""
    filters: dict[Level, list[KeyFilter]] = {"study": [], "series": [], "instance": []}
    combined: set[Path] = set()
    for level, moments, paths in datetime_filters(query):
        filters[level].append(moments)
        combined |= paths
    for match in query.matches:
        compiled = None if match.path in combined else key_filter(match)
        if compiled is not None:
            filters[attribute_level(match.path[0])].append(compiled)
    for level, items in item_filters(query):
        filters[level].append(items)
    return DicomQuery(
        level=query.level,
        study_filters=tuple(filters["study"]),
        series_filters=tuple(filters["series"]),
        instance_filters=tuple(filters["instance"]),
        study_uid=scope.study_uid,
        series_uid=scope.series_uid,
        patient_ref=patient_ref,
        limit=query.limit,
        offset=query.offset,
    )


def _is(value: int) -> Json:
    return {"vr": "IS", "Value": [value]}


def study_json(match: DicomMatch, base: str) -> Json:
    """A study's stored attributes plus its aggregates and RetrieveURL."""
    s = match.study
    out = dict(s.attrs)
    out[MODALITIES_IN_STUDY] = (
        {"vr": "CS", "Value": list(s.modalities)} if s.modalities else {"vr": "CS"}
    )
    out[STUDY_RELATED_SERIES] = _is(s.series_count)
    out[STUDY_RELATED_INSTANCES] = _is(s.instance_count)
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{s.uid}"]}
    return out


def series_json(match: DicomMatch, base: str) -> Json:
    assert match.series is not None
    se = match.series
    out = dict(se.attrs)
    out[SERIES_RELATED_INSTANCES] = _is(se.instance_count)
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{se.study_uid}/series/{se.uid}"]}
    return out


def instance_json(match: DicomMatch, base: str) -> Json:
    assert match.instance is not None
    i = match.instance
    out = dict(i.attrs)
    # the File Meta element is no part of the data set; what it says, this does
    out.pop(TRANSFER_SYNTAX_UID, None)
    out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [i.transfer_syntax_uid]}
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    url = f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.uid}"
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return out


@dataclass(frozen=True)
class ResultShape:
    """What each result of one query carries: the attributes kept (None: all) and
    the empty attributes standing in for those a result has no value for."""

    keep: frozenset[str] | None
    empty: tuple[tuple[str, Json], ...]


def result_shape(query: QidoQuery) -> ResultShape:
    """A required, matched or included attribute a result has no value for is
    returned empty, as a C-FIND SCP returns a return key it has no value for
    (PS3.4 C.4.1.1.3.2): a client can tell "no value" from "not looked at".
    TimezoneOffsetFromUTC is returned only if present (PS3.18 Table 10.6.3-3)."""
    wanted = return_attributes(query)
    keys = [f"{p[0]:08X}" for p in wanted]
    empty = tuple(
        (key, {"vr": dictionary_vr(p[0])})
        for key, p in zip(keys, wanted, strict=True)
        if p[0] not in ONLY_IF_PRESENT
    )
    return ResultShape(None if query.include_all else frozenset(keys), empty)


def result_json(query: QidoQuery, match: DicomMatch, base: str, shape: ResultShape) -> Json:
    """One QIDO-RS result object (PS3.18 §10.6.3.3), shaped by ``result_shape(query)``."""
    merged: Json = {}
    if "study" in query.levels:
        merged |= study_json(match, base)
    if query.level in ("series", "instance") and "series" in query.levels:
        merged |= series_json(match, base)
    if query.level == "instance":
        merged |= instance_json(match, base)
    if query.level != "study":
        merged[RETRIEVE_URL] = (
            series_json(match, base) if query.level == "series" else instance_json(match, base)
        )[RETRIEVE_URL]
    if shape.keep is not None:
        merged = {k: v for k, v in merged.items() if k in shape.keep}
    for key, nothing in shape.empty:
        merged.setdefault(key, nothing)
    return dict(sorted(merged.items()))
