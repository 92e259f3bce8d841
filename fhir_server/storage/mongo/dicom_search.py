"""QIDO searches on the MongoDB DICOM index, and the document-to-row helpers.

Each ``KeyFilter`` is an ``$elemMatch`` on the multikey ``(keys.k, keys.v)``
index. Conditions on a parent level are resolved to the matching parents'
UIDs first (an indexed query), then applied to the child level as ``$in``;
results come in UID order with skip/limit plus one look-ahead. A command is at
most 16 MiB (about 200,000 UIDs), so past ``PARENT_LIMIT`` parents the
children are read in UID order instead, ``CHECK_BATCH`` at a time, and their
parents checked batch by batch: a condition that many parents meet is met by
most children, so few batches are read.
"""

from __future__ import annotations

from dataclasses import dataclass
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
PARENT_LIMIT = 50_000
CHECK_BATCH = 1000
Doc = dict[str, Any]
_NO_BULK: Doc = {"meta": 0, "keys": 0, "skeys": 0}


@dataclass(frozen=True, slots=True)
class _Parents:
    """Conditions on the parents of a level's rows: ``field`` of a row names its parent
    in ``collection``, which must match ``where``, and its own parent ``up``."""

    field: str
    collection: str
    where: Doc
    up: _Parents | None = None


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
        int(doc.get("srev", 0)), doc.get("pkey"),
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


def _and(*conditions: Doc) -> Doc:
    present = [c for c in conditions if c]
    return {"$and": present} if present else {}


def _study_where(query: DicomQuery) -> Doc:
    where: list[Doc] = [key_filter(f) for f in query.study_filters]
    if query.study_uid is not None:
        where.append({"_id": query.study_uid})
    if query.patient_ref is not None:
        where.append({"patient": query.patient_ref})
    if query.patient_refs is not None:
        where.append({"patient": {"$in": list(query.patient_refs)}})
    return _and(*where)


def _study_parents(query: DicomQuery) -> _Parents | None:
    """The study-level conditions on series or instances, if any narrows them."""
    restricted = query.patient_ref is not None or query.patient_refs is not None
    if query.study_filters or restricted:
        return _Parents("study", STUDIES, _study_where(query))
    return None


def _in_study(query: DicomQuery) -> Doc:
    """The study UID as a condition on a series or instance (when not a parent's)."""
    by_study = _study_parents(query) is not None
    return {} if by_study or query.study_uid is None else {"study": query.study_uid}


def _series_own(query: DicomQuery) -> Doc:
    where: list[Doc] = [key_filter(f) for f in query.series_filters]
    if query.series_uid is not None:
        where.append({"_id": query.series_uid})
    return _and(*where, _in_study(query))


def _instance_parents(query: DicomQuery) -> _Parents | None:
    if query.series_filters or query.series_uid is not None:
        return _Parents("series", SERIES, _series_own(query), _study_parents(query))
    return _study_parents(query)


async def _resolve(db: Database, parents: _Parents) -> Doc | None:
    """``parents`` as a condition on the rows (their UIDs, ``$in``), or None when more
    than ``PARENT_LIMIT`` match."""
    where = parents.where
    if parents.up is not None:
        up = await _resolve(db, parents.up)
        if up is None:
            return None
        where = _and(where, up)
    found = db[parents.collection].find(where, {"_id": 1}).limit(PARENT_LIMIT + 1)
    uids = [str(d["_id"]) async for d in found]
    return None if len(uids) > PARENT_LIMIT else {parents.field: {"$in": uids}}


async def _meeting(db: Database, parents: _Parents, uids: set[str]) -> set[str]:
    """Those of ``uids`` whose parents meet ``parents``' conditions."""
    where = _and({"_id": {"$in": sorted(uids)}}, parents.where)
    up = parents.up
    docs = await db[parents.collection].find(where, {up.field if up else "_id": 1}).to_list(None)
    if up is not None:
        kept = await _meeting(db, up, {d[up.field] for d in docs})
        docs = [d for d in docs if d[up.field] in kept]
    return {d["_id"] for d in docs}


async def _rows(
    db: Database, collection: str, own: Doc, parents: _Parents | None, query: DicomQuery
) -> list[Doc]:
    """The page of ``collection``'s rows meeting ``own`` and ``parents``, plus one."""
    condition = {} if parents is None else await _resolve(db, parents)
    if condition is not None:
        return await _page(db, collection, _and(own, condition), query)
    assert parents is not None
    wanted = query.offset + query.limit + 1
    kept: list[str] = []
    after: str | None = None
    while len(kept) < wanted:
        where = own if after is None else _and(own, {"_id": {"$gt": after}})
        found = db[collection].find(where, {parents.field: 1}).sort("_id", 1)
        batch = await found.limit(CHECK_BATCH).to_list(None)
        if not batch:
            break
        meeting = await _meeting(db, parents, {d[parents.field] for d in batch})
        kept += [d["_id"] for d in batch if d[parents.field] in meeting]
        after = batch[-1]["_id"]
    page = kept[query.offset : wanted]
    rows = await _by_id(db, collection, set(page))
    return [rows[uid] for uid in page]


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
        docs = await _rows(db, SERIES, _series_own(query), _study_parents(query), query)
        studies = await _by_id(db, STUDIES, {d["study"] for d in docs})
        found = [
            DicomMatch(study_row(studies[d["study"]]), series_row(d)) for d in docs[: query.limit]
        ]
        return DicomPage(found, more=len(docs) > query.limit)
    own = _and(*(key_filter(f) for f in query.instance_filters), _in_study(query))
    docs = await _rows(db, INSTANCES, own, _instance_parents(query), query)
    studies = await _by_id(db, STUDIES, {d["study"] for d in docs})
    series = await _by_id(db, SERIES, {d["series"] for d in docs})
    found = [
        DicomMatch(study_row(studies[d["study"]]), series_row(series[d["series"]]), instance_row(d))
        for d in docs[: query.limit]
    ]
    return DicomPage(found, more=len(docs) > query.limit)
