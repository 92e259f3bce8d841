"""QIDO searches on the SQLite DICOM index, compiled to SQL over indexes.

Each ``KeyFilter`` becomes ``pk IN (SELECT pk FROM dicom_key WHERE level = ?
AND key = ? AND value …)``, an index range on ``dicom_key_lookup``
(wildcards use ``GLOB``, case-sensitive, whose literal prefix SQLite turns
into a range); the Patients a caller may reach come as one JSON array
(``json_each``), however many they are. Results come in UID order with
``LIMIT``/``OFFSET``; one row more than asked tells whether more exist.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from fhir_server.storage.dicom_port import (
    BlobLocation,
    DicomMatch,
    DicomPage,
    DicomQuery,
    InstanceRow,
    KeyFilter,
    SeriesRow,
    StudyRow,
)

STUDY_COLS = (
    "st.uid, st.attrs, st.modalities, st.n_series, st.n_instances, st.patient_ref, st.rev, "
    "st.synced_rev, st.patient_key"
)
SERIES_COLS = "se.uid, st.uid, se.attrs, se.n_instances, se.rev"
INSTANCE_COLS = (
    "i.uid, se.uid, st.uid, i.attrs, i.blob_key, i.blob_size, i.blob_sha256, i.ts, i.inst_no, "
    "i.extra"
)
_N_STUDY, _N_SERIES = 9, 5


def study_row(r: sqlite3.Row | tuple[Any, ...]) -> StudyRow:
    modalities = tuple(m for m in str(r[2]).split("\\") if m)
    attrs = orjson.loads(r[1])
    return StudyRow(r[0], attrs, modalities, int(r[3]), int(r[4]), r[5], int(r[6]), int(r[7]), r[8])


def series_row(r: sqlite3.Row | tuple[Any, ...]) -> SeriesRow:
    return SeriesRow(r[0], r[1], orjson.loads(r[2]), int(r[3]), int(r[4]))


def instance_row(r: sqlite3.Row | tuple[Any, ...]) -> InstanceRow:
    blob = BlobLocation(r[4], int(r[5]), r[6])
    return InstanceRow(r[0], r[1], r[2], orjson.loads(r[3]), blob, r[7], r[8], orjson.loads(r[9]))


def glob_pattern(pattern: str) -> str:
    """A QIDO wildcard (``*``, ``?``) as a GLOB pattern, other characters literal."""
    return "".join("[[]" if c == "[" else c for c in pattern)


def _filter_sql(alias: str, level: str, f: KeyFilter) -> tuple[str, list[Any]]:
    head = f"{alias}.pk IN (SELECT pk FROM dicom_key WHERE level = ? AND key = ? AND "
    args: list[Any] = [level, f.key]
    if f.op == "eq":
        cond = "value = ?"
        args.append(f.values[0])
    elif f.op == "any":
        cond = f"value IN ({', '.join('?' * len(f.values))})"
        args.extend(f.values)
    elif f.op == "glob":
        cond = "value GLOB ?"
        args.append(glob_pattern(f.values[0]))
    else:
        low, high = f.values
        parts = (["value >= ?"] if low else []) + (["value <= ?"] if high else [])
        cond = " AND ".join(parts) or "1"
        args.extend(v for v in (low, high) if v)
    return f"{head}{cond})", args


_FROM = {
    "study": "FROM dicom_study st",
    "series": "FROM dicom_series se JOIN dicom_study st ON st.pk = se.study_pk",
    "instance": (
        "FROM dicom_instance i JOIN dicom_series se ON se.pk = i.series_pk "
        "JOIN dicom_study st ON st.pk = i.study_pk"
    ),
}
_SELECT = {
    "study": STUDY_COLS,
    "series": f"{STUDY_COLS}, {SERIES_COLS}",
    "instance": f"{STUDY_COLS}, {SERIES_COLS}, {INSTANCE_COLS}",
}
_ORDER = {"study": "st.uid", "series": "se.uid", "instance": "i.uid"}


def compile_search(query: DicomQuery) -> tuple[str, list[Any]]:
    """The SQL and arguments of one page of ``query`` (plus one look-ahead row)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("st.uid", query.study_uid),
        ("se.uid", query.series_uid),
        ("st.patient_ref", query.patient_ref),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.patient_refs is not None:
        # One JSON array, not a parameter each: a referrer's patients can outnumber
        # the parameters SQLite binds (32,766 by default), and paging rules out
        # chunks. Each value is still looked up on ``dicom_study_patient``; an
        # empty array matches nothing.
        where.append("st.patient_ref IN (SELECT value FROM json_each(?))")
        args.append(orjson.dumps(query.patient_refs).decode())
    for alias, level, filters in (
        ("st", "study", query.study_filters),
        ("se", "series", query.series_filters),
        ("i", "instance", query.instance_filters),
    ):
        for f in filters:
            sql, more = _filter_sql(alias, level, f)
            where.append(sql)
            args.extend(more)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (
        f"SELECT {_SELECT[query.level]} {_FROM[query.level]} {clause} "
        f"ORDER BY {_ORDER[query.level]} LIMIT ? OFFSET ?"
    )
    return sql, [*args, query.limit + 1, query.offset]


def _match(level: str, r: tuple[Any, ...]) -> DicomMatch:
    study = study_row(r[:_N_STUDY])
    if level == "study":
        return DicomMatch(study)
    series = series_row(r[_N_STUDY : _N_STUDY + _N_SERIES])
    if level == "series":
        return DicomMatch(study, series)
    return DicomMatch(study, series, instance_row(r[_N_STUDY + _N_SERIES :]))


def search(conn: sqlite3.Connection, query: DicomQuery) -> DicomPage:
    """Run ``query`` (see ``DicomIndex.search``)."""
    sql, args = compile_search(query)
    rows = conn.execute(sql, args).fetchall()
    found = [_match(query.level, tuple(r)) for r in rows[: query.limit]]
    return DicomPage(found, more=len(rows) > query.limit)
