"""QIDO searches on the MongoDB DICOM index, and the document-to-row helpers.

Each ``KeyFilter`` is an ``$elemMatch`` on the multikey ``(keys.k, keys.v)``
index. Conditions on a parent level are resolved to the matching parents'
UIDs first (an indexed ``distinct``), then applied to the child level as
``$in``; results come in UID order with skip/limit plus one look-ahead.
"""

from __future__ import annotations

from typing import Any

from fhir_server.storage.dicom_port import (
    BlobLocation,
    DicomMatch,
    DicomPage,
    DicomQuery,
    InstanceRow,
    KeyFilter,
    SeriesRow,
    StudyRow,
    glob_regex,
)
from fhir_server.storage.mongo.journal import Database

STUDIES, SERIES, INSTANCES = "dicom_studies", "dicom_series", "dicom_instances"
Doc = dict[str, Any]
_NO_BULK: Doc = {"meta": 0, "keys": 0, "skeys": 0}


def key_filter(f: KeyFilter) -> Doc:
    """One ``KeyFilter`` as a MongoDB condition on ``keys``."""
    cond: Any
    if f.op == "eq":
        cond = f.values[0]
    elif f.op == "any":
        cond = {"$in": list(f.values)}
    elif f.op == "glob":
        cond = {"$regex": glob_regex(f.values[0]), "$options": "s"}
    else:
        low, high = f.values
        cond = ({"$gte": low} if low else {}) | ({"$lte": high} if high else {})
        if not cond:
            return {"keys.k": f.key}
    return {"keys": {"$elemMatch": {"k": f.key, "v": cond}}}


def study_row(doc: Doc) -> StudyRow:
    return StudyRow(
        doc["_id"], doc["attrs"], tuple(doc.get("mods", ())), int(doc.get("nse", 0)),
        int(doc.get("nin", 0)), doc.get("patient"), int(doc.get("rev", 0)),
        int(doc.get("srev", 0)),
    )  # fmt: skip


def series_row(doc: Doc) -> SeriesRow:
    return SeriesRow(
        doc["_id"], doc["study"], doc["attrs"], int(doc.get("nin", 0)), int(doc.get("rev", 0))
    )


def instance_row(doc: Doc) -> InstanceRow:
    blob = BlobLocation(doc["blob"]["key"], int(doc["blob"]["size"]), doc["blob"]["sha"])
    return InstanceRow(
        doc["_id"], doc["series"], doc["study"], doc["attrs"], blob, doc["ts"], doc.get("num"),
        doc.get("extra", {}),
    )  # fmt: skip


def blob_location(doc: Doc) -> BlobLocation:
    blob = doc["blob"]
    return BlobLocation(blob["key"], int(blob["size"]), blob["sha"])


def _study_where(query: DicomQuery) -> Doc:
    where: list[Doc] = [key_filter(f) for f in query.study_filters]
    if query.study_uid is not None:
        where.append({"_id": query.study_uid})
    if query.patient_ref is not None:
        where.append({"patient": query.patient_ref})
    if query.patient_refs is not None:
        where.append({"patient": {"$in": list(query.patient_refs)}})
    return {"$and": where} if where else {}


def _by_study(query: DicomQuery) -> bool:
    """Whether the study-level conditions narrow the series or instances."""
    restricted = query.patient_ref is not None or query.patient_refs is not None
    return bool(query.study_filters) or restricted


async def _parent_ids(db: Database, collection: str, where: Doc) -> list[str]:
    return [str(uid) for uid in await db[collection].distinct("_id", where)]


async def _series_where(db: Database, query: DicomQuery) -> Doc:
    where: list[Doc] = [key_filter(f) for f in query.series_filters]
    if query.series_uid is not None:
        where.append({"_id": query.series_uid})
    if _by_study(query):
        where.append({"study": {"$in": await _parent_ids(db, STUDIES, _study_where(query))}})
    elif query.study_uid is not None:
        where.append({"study": query.study_uid})
    return {"$and": where} if where else {}


async def _instance_where(db: Database, query: DicomQuery) -> Doc:
    where: list[Doc] = [key_filter(f) for f in query.instance_filters]
    if query.series_filters or query.series_uid is not None:
        series = await _parent_ids(db, SERIES, await _series_where(db, query))
        where.append({"series": {"$in": series}})
    elif _by_study(query):
        where.append({"study": {"$in": await _parent_ids(db, STUDIES, _study_where(query))}})
    elif query.study_uid is not None:
        where.append({"study": query.study_uid})
    return {"$and": where} if where else {}


async def _page(db: Database, collection: str, where: Doc, query: DicomQuery) -> list[Doc]:
    cursor = db[collection].find(where, _NO_BULK).sort("_id", 1)
    return [d async for d in cursor.skip(query.offset).limit(query.limit + 1)]


async def _by_id(db: Database, collection: str, ids: set[str]) -> dict[str, Doc]:
    cursor = db[collection].find({"_id": {"$in": sorted(ids)}}, _NO_BULK)
    return {d["_id"]: d async for d in cursor}


async def run_search(db: Database, query: DicomQuery) -> DicomPage:
    """Run ``query`` (see ``DicomIndex.search``)."""
    if query.level == "study":
        docs = await _page(db, STUDIES, _study_where(query), query)
        found = [DicomMatch(study_row(d)) for d in docs[: query.limit]]
        return DicomPage(found, more=len(docs) > query.limit)
    if query.level == "series":
        docs = await _page(db, SERIES, await _series_where(db, query), query)
        studies = await _by_id(db, STUDIES, {d["study"] for d in docs})
        found = [
            DicomMatch(study_row(studies[d["study"]]), series_row(d)) for d in docs[: query.limit]
        ]
        return DicomPage(found, more=len(docs) > query.limit)
    docs = await _page(db, INSTANCES, await _instance_where(db, query), query)
    studies = await _by_id(db, STUDIES, {d["study"] for d in docs})
    series = await _by_id(db, SERIES, {d["series"] for d in docs})
    found = [
        DicomMatch(study_row(studies[d["study"]]), series_row(series[d["series"]]), instance_row(d))
        for d in docs[: query.limit]
    ]
    return DicomPage(found, more=len(docs) > query.limit)
