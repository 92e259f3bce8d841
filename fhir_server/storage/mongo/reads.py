"""Reads of versions, history and the change log on MongoDB.

Semantics match the SQLite adapter: history is newest first by ``seq`` and
keyset-paged on it; ``_at`` keeps, per resource, the newest version written at
or before that moment (a deletion included); the total counts every version
matching the filter. See https://hl7.org/fhir/R4/http.html#history
"""

from __future__ import annotations

from inspect import isawaitable
from typing import Any

from pymongo import ASCENDING, DESCENDING

from fhir_server.search.dates import to_micros
from fhir_server.storage.base import HistoryPage, HistoryQuery, StoredVersion
from fhir_server.storage.mongo.documents import HISTORY, RESOURCES, Doc, key_of, stored
from fhir_server.storage.mongo.journal import Database, change_cap

# Everything a StoredVersion needs from a ``resources`` document (not the index).
VERSION_FIELDS: Doc = {"idx": 0, "sort": 0}


async def read_current(db: Database, resource_type: str, id: str) -> StoredVersion | None:
    doc = await db[RESOURCES].find_one({"_id": key_of(resource_type, id)}, VERSION_FIELDS)
    return stored(doc) if doc else None


async def read_version(
    db: Database, resource_type: str, id: str, version: int
) -> StoredVersion | None:
    doc = await db[HISTORY].find_one({"type": resource_type, "id": id, "version": version})
    return stored(doc) if doc else None


async def aggregate(db: Database, collection: str, pipeline: list[Doc]) -> list[Doc]:
    """Run a pipeline on PyMongo's async API (a coroutine) or an emulator (a cursor)."""
    cursor: Any = db[collection].aggregate(pipeline)
    if isawaitable(cursor):
        cursor = await cursor
    docs: list[Doc] = await cursor.to_list(None)
    return docs


def _where(query: HistoryQuery) -> Doc:
    where: Doc = {}
    if query.resource_type is not None:
        where["type"] = query.resource_type
    if query.id is not None:
        where["id"] = query.id
    if query.since is not None:
        where["lu"] = {"$gte": to_micros(query.since)}
    return where


async def _current_at(db: Database, query: HistoryQuery) -> list[int]:
    """The ``seq`` of each resource's newest version written at or before ``query.at``."""
    assert query.at is not None
    match = {k: v for k, v in _where(query).items() if k != "lu"}
    match["lu"] = {"$lte": to_micros(query.at)}
    groups = await aggregate(
        db,
        HISTORY,
        [{"$match": match}, {"$group": {"_id": {"t": "$type", "i": "$id"}, "s": {"$max": "$seq"}}}],
    )
    return [int(g["s"]) for g in groups]


async def history(db: Database, query: HistoryQuery) -> HistoryPage:
    """Versions newest first (by change sequence), keyset-paged on ``seq``."""
    where = _where(query)
    if query.at is not None:
        where["seq"] = {"$in": await _current_at(db, query)}
    page_where = dict(where)
    if query.before_seq is not None:
        page_where["$and"] = [{"seq": {"$lt": query.before_seq}}]
    cursor = db[HISTORY].find(page_where).sort("seq", DESCENDING).limit(query.count + 1)
    docs = await cursor.to_list(None) if query.count > 0 else []
    total = await db[HISTORY].count_documents(where)
    versions = [stored(d) for d in docs[: query.count]]
    next_before = versions[-1].seq if len(docs) > query.count and versions else None
    return HistoryPage(versions, total, next_before)


async def changes(
    db: Database, after_seq: int, limit: int, resource_type: str | None, now: float
) -> tuple[list[StoredVersion], bool]:
    """The committed change log after ``after_seq`` (of ``resource_type`` only, if
    given), and whether recovery at ``now`` would unblock more."""
    cap, stale = await change_cap(db, now)
    if cap <= after_seq or limit <= 0:
        return [], stale
    where: dict[str, Any] = {"seq": {"$gt": after_seq, "$lte": cap}}
    if resource_type is not None:
        where["type"] = resource_type  # served by the (type, seq) index
    cursor = db[HISTORY].find(where).sort("seq", ASCENDING).limit(limit)
    return [stored(d) for d in await cursor.to_list(None)], stale
