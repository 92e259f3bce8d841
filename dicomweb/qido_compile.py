"""QIDO-RS on the DICOM index: ``QidoQuery`` → ``DicomQuery``, matches → DICOM JSON.

Query values are normalised with the same functions ``records`` applies to
stored values, so the index compares plain strings. Results carry every
attribute PS3.18 Tables 10.6.3-3/4/5 require at the levels searched, the
aggregates the index keeps (ModalitiesInStudy and the counts) and a
RetrieveURL, filtered by ``includefield`` unless ``includefield=all``.

Known simplification: a PN query value with several component groups
(``Alphabetic=Ideographic``) matches on its first non-empty group.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb.qido import (
    LEVEL_OF,
    NUMERIC_VRS,
    Level,
    Match,
    QidoQuery,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    pn_normal,
    return_attributes,
)
from dicomweb.records import key_name, number_normal
from fhir_server.storage.dicom_port import DicomMatch, DicomQuery, Json, KeyFilter

INSTANCE_AVAILABILITY = "00080056"
MODALITIES_IN_STUDY = "00080061"
RETRIEVE_URL = "00081190"
STUDY_RELATED_SERIES = "00201206"
STUDY_RELATED_INSTANCES = "00201208"
SERIES_RELATED_INSTANCES = "00201209"


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


def compile_query(query: QidoQuery, scope: Scope, patient_ref: str | None) -> DicomQuery:
    """The index query of a parsed QIDO-RS search (PS3.18 §10.6.1)."""
    filters: dict[Level, list[KeyFilter]] = {"study": [], "series": [], "instance": []}
    for match in query.matches:
        compiled = key_filter(match)
        if compiled is not None:
            filters[LEVEL_OF.get(match.path[0], query.level)].append(compiled)
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
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    url = f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.uid}"
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return out


def result_json(query: QidoQuery, match: DicomMatch, base: str) -> Json:
    """One QIDO-RS result object (PS3.18 §10.6.3.3), filtered to what was asked for."""
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
    if not query.include_all:
        wanted = {f"{p[0]:08X}" for p in return_attributes(query)}
        merged = {k: v for k, v in merged.items() if k in wanted}
    return dict(sorted(merged.items()))
