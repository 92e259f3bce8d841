"""The DICOM index on MongoDB: one collection per level.

``dicom_studies``, ``dicom_series`` and ``dicom_instances`` are keyed by UID
(``_id``); each document holds its DICOM JSON (``attrs``), its aggregates, and
its match keys as ``keys: [{k, v}]`` under a multikey index on ``(keys.k,
keys.v)``, so each QIDO filter is an ``$elemMatch`` served by that index.
Filters on a parent level are resolved first to the parents' UIDs (indexed),
then applied as ``$in`` on the child's parent field. An instance's WADO-RS
metadata (``meta``) of more than 1 MiB is kept beside its document, in chunks
(``dicom_meta``), so that a large enhanced multi-frame instance fits.

A batch runs under the store's write lock, in a few bulk writes whatever its
size (``dicom_writes``). Without multi-document transactions (see ``store``), a
batch is not all-or-nothing on MongoDB: the instance documents are written last,
after their series and studies, each in one atomic write (an overwrite replaces
the stored version in place), so a batch that fails part-way leaves no instance
without its parents and loses no stored version. Aggregates: each study and
series a batch writes to is marked ``dirty`` first, and recounted when the
batch ends, whether it failed or not. A series still marked -- its process
died, or the recount failed too -- is recounted by the next batch that sends
one of its instances, an identical re-send (``duplicate``) included, and every
marked series and study at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import dataclass, field

from pymongo import ASCENDING, IndexModel, UpdateOne

from fhir_server.errors import StorageUnavailable
from fhir_server.storage.dicom_port import (
    MODALITIES_KEY,
    Deleted,
    DicomLevel,
    DicomPage,
    DicomQuery,
    InstanceFile,
    InstanceRecord,
    InstanceRow,
    KeyDeriver,
    SeriesRow,
    StoreResult,
    StudyRow,
)
from fhir_server.storage.mongo import dicom_meta
from fhir_server.storage.mongo.dicom_search import (
    INSTANCES,
    SERIES,
    STUDIES,
    Doc,
    blob_location,
    instance_row,
    run_search,
    series_row,
    study_row,
)
from fhir_server.storage.mongo.dicom_writes import (
    REVISION,
    Planned,
    keys_doc,
    plan,
    read_known,
    revision_filter,
    write_instances,
    write_parents,
)
from fhir_server.storage.mongo.errors import mapped
from fhir_server.storage.mongo.journal import Database

META = "dicom_meta"  # what the match keys were derived by (``rekey``)
REKEY_CHUNK = 500
# Reads and plans of one batch (and recounts of one row) while other radhub instances'
# writes to its studies and series overtake each one; each try lost means another
# instance's write went through, so a long run of them is not contention but a fault.
PLAN_ATTEMPTS = 8
_RECOUNT_FIELDS = {"study": 1, "skeys": 1, REVISION: 1}
_COLLECTIONS = {"study": STUDIES, "series": SERIES, "instance": INSTANCES}
_KEYS = [("keys.k", ASCENDING), ("keys.v", ASCENDING)]
_INDEXES: dict[str, list[IndexModel]] = {
    STUDIES: [
        IndexModel(_KEYS),
        IndexModel([("patient", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("dirty", ASCENDING)], sparse=True),
    ],
    SERIES: [
        IndexModel(_KEYS),
        IndexModel([("study", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("dirty", ASCENDING)], sparse=True),
    ],
    INSTANCES: [
        IndexModel(_KEYS),
        IndexModel([("series", ASCENDING), ("num", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("study", ASCENDING), ("_id", ASCENDING)]),
    ],
    dicom_meta.CHUNKS: dicom_meta.INDEXES,
}


class MongoDicomIndex:
    """The MongoDB adapter of ``DicomIndex`` (see the module docstring)."""

    def __init__(self, db: Database, lock: asyncio.Lock) -> None:
        self._db = db
        self._lock = lock

    @mapped
    async def start(self) -> None:
        for collection, models in _INDEXES.items():
            await self._db[collection].create_indexes(models)
        async with self._lock:  # the aggregates a process that died left stale
            series = await self._db[SERIES].distinct("_id", {"dirty": True})
            studies = await self._db[STUDIES].distinct("_id", {"dirty": True})
            await self._refresh(set(series), set(studies))

    # -- writes -------------------------------------------------------------------------

    @mapped
    async def store_batch(
        self, records: Sequence[InstanceRecord], *, overwrite: bool = False
    ) -> list[StoreResult]:
        async with self._lock:
            touched = _Touched()
            seen: set[str] = set()  # series of duplicates: recounted if marked dirty
            try:
                return await self._store(records, overwrite, touched, seen)
            finally:
                dirty = await self._dirty(seen - touched.series)
                await self._refresh(touched.series | dirty, touched.studies)

    async def _dirty(self, series_uids: set[str]) -> set[str]:
        if not series_uids:
            return set()
        found = self._db[SERIES].find({"_id": {"$in": list(series_uids)}, "dirty": True}, {})
        return {d["_id"] async for d in found}

    async def _store(
        self,
        records: Sequence[InstanceRecord],
        overwrite: bool,
        touched: _Touched,
        seen: set[str],
    ) -> list[StoreResult]:
        """Plan every record, then write the parents and the instances (``dicom_writes``);
        plan again while another radhub instance's writes overtake the parents'."""
        if not records:
            return []
        for _ in range(PLAN_ATTEMPTS):
            known = await read_known(self._db, records)
            plans = [plan(rec, overwrite, known, seen) for rec in records]
            planned = [p for p in plans if isinstance(p, Planned)]
            if not planned:
                return [p for p in plans if isinstance(p, StoreResult)]
            before = _Touched(set(touched.series), set(touched.studies))
            touched.add(planned)  # should the writes fail part-way
            written = await write_parents(self._db, planned, known)
            # what was not written is another instance's to recount
            touched.series = before.series | written.series
            touched.studies = before.studies | written.studies
            if not written.moved:
                break
        else:
            raise StorageUnavailable("the study's index entries kept changing; send it again")
        moved = {p.old["series"] for p in planned if p.old is not None} - touched.series
        touched.series.update(moved)  # an overwrite that moved an instance to another series
        await self._mark_dirty(moved)
        written_instances = iter(await write_instances(self._db, planned))
        return [next(written_instances) if isinstance(p, Planned) else p for p in plans]

    async def _mark_dirty(self, series_uids: set[str]) -> None:
        if series_uids:
            where = {"_id": {"$in": list(series_uids)}}
            await self._db[SERIES].update_many(where, {"$set": {"dirty": True}})

    async def _refresh(self, series_uids: set[str], study_uids: Set[str] = frozenset()) -> None:
        """Recount ``series_uids`` and ``study_uids`` and the studies of the series,
        dropping the empty ones, and clear their dirty marks."""
        studies = set(study_uids)
        for uid in series_uids:
            study = await self._recount(SERIES, uid, self._series_counts)
            if study is not None:
                studies.add(study)
        for uid in studies:
            await self._recount(STUDIES, uid, self._study_counts)

    async def _recount(
        self, collection: str, uid: str, counts: Callable[[Doc], Awaitable[Doc | None]]
    ) -> str | None:
        """Set a series' or study's ``counts`` (None: it is empty, and removed), a
        compare-and-set on its revision: another radhub instance on the database may
        write to it and recount it meanwhile, and a count made before its instances
        landed must not overwrite its later one. Returns a series' study."""
        study: str | None = None
        for _ in range(PLAN_ATTEMPTS):
            doc = await self._db[collection].find_one({"_id": uid}, _RECOUNT_FIELDS)
            if doc is None:
                break
            study = doc.get("study")
            where = {"_id": uid, **revision_filter(doc.get(REVISION))}
            update = await counts(doc)
            if update is None:
                done = (await self._db[collection].delete_one(where)).deleted_count
            else:
                change = {"$set": update, "$inc": {REVISION: 1}, "$unset": {"dirty": ""}}
                done = (await self._db[collection].update_one(where, change)).matched_count
            if done:
                break
        # (else written to at every try: each writer recounts after its own writes)
        return study

    async def _series_counts(self, doc: Doc) -> Doc | None:
        count = await self._db[INSTANCES].count_documents({"series": doc["_id"]})
        return {"nin": count} if count else None

    async def _study_counts(self, doc: Doc) -> Doc | None:
        uid = doc["_id"]
        n_series = await self._db[SERIES].count_documents({"study": uid})
        if n_series == 0:
            return None
        n_instances = await self._db[INSTANCES].count_documents({"study": uid})
        found = await self._db[SERIES].distinct("modality", {"study": uid})
        mods = sorted(m for m in found if m)
        keys = [k for k in doc.get("skeys", []) if k["k"] != MODALITIES_KEY]
        keys += [{"k": MODALITIES_KEY, "v": m} for m in mods]
        return {"nse": n_series, "nin": n_instances, "mods": mods, "keys": keys}

    @mapped
    async def set_patient(
        self, study_uid: str, patient_ref: str | None, patient_key: str | None
    ) -> None:
        async with self._lock:
            # {"pkey": None} also matches a study stored before keys were kept
            where = {"_id": study_uid, "pkey": patient_key}
            await self._db[STUDIES].update_one(where, {"$set": {"patient": patient_ref}})

    @mapped
    async def mark_synced(self, study_uid: str, revision: int) -> None:
        async with self._lock:
            await self._db[STUDIES].update_one({"_id": study_uid}, {"$max": {"srev": revision}})

    @mapped
    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> Deleted:
        async with self._lock:
            where = _scope(study_uid, series_uid, sop_uid)
            docs = [d async for d in self._db[INSTANCES].find(where, {"blob": 1, "series": 1})]
            series = {d["series"] for d in docs}
            await self._mark_dirty(series)
            try:
                await self._db[INSTANCES].delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
                await dicom_meta.drop(self._db, [d["_id"] for d in docs])
            finally:
                await self._refresh(series)
        blobs = [blob_location(d) for d in docs]
        return Deleted(blobs, [study_uid] if docs else [])

    @mapped
    async def rekey(self, version: str, derive: KeyDeriver, levels: Sequence[DicomLevel]) -> int:
        meta = await self._db[META].find_one({"_id": "keys"})
        if meta is not None and meta.get("version") == version:
            return 0
        done = 0
        for level in levels:
            after = ""  # UIDs sort after ""
            while chunk := await self._rekey_chunk(level, after, derive):
                after, count = chunk
                done += count
        await self._db[META].update_one(
            {"_id": "keys"}, {"$set": {"version": version}}, upsert=True
        )
        return done

    async def _rekey_chunk(
        self, level: DicomLevel, after: str, derive: KeyDeriver
    ) -> tuple[str, int] | None:
        """Re-key the next ``REKEY_CHUNK`` documents after ``after`` under the write lock."""
        collection = self._db[_COLLECTIONS[level]]
        async with self._lock:  # read under it too: no ingest between reading and writing
            found = collection.find({"_id": {"$gt": after}}, {"attrs": 1, "mods": 1})
            docs = [d async for d in found.sort("_id", 1).limit(REKEY_CHUNK)]
            if not docs:
                return None
            updates = [
                UpdateOne({"_id": d["_id"]}, {"$set": _rekeyed(level, d, derive)}) for d in docs
            ]
            await collection.bulk_write(updates, ordered=False)
        return str(docs[-1]["_id"]), len(docs)

    # -- reads --------------------------------------------------------------------------

    @mapped
    async def study(self, study_uid: str) -> StudyRow | None:
        doc = await self._db[STUDIES].find_one({"_id": study_uid})
        return None if doc is None else study_row(doc)

    @mapped
    async def series_of(self, study_uid: str) -> list[SeriesRow]:
        cursor = self._db[SERIES].find({"study": study_uid}).sort("_id", ASCENDING)
        return [series_row(d) async for d in cursor]

    @mapped
    async def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRow]:
        docs = await self._instance_docs(study_uid, series_uid, sop_uid, {"meta": 0, "keys": 0})
        return [instance_row(d) for d in docs]

    @mapped
    async def instance_files(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        # "num": only for the order (``_instance_order``), which is kept client-side
        projection = {"series": 1, "study": 1, "blob": 1, "ts": 1, "num": 1}
        docs = await self._instance_docs(study_uid, series_uid, sop_uid, projection)
        return [
            InstanceFile(d["_id"], d["series"], d["study"], blob_location(d), d["ts"]) for d in docs
        ]

    @mapped
    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[bytes]:
        projection = {**dicom_meta.FIELDS, "series": 1, "num": 1}
        docs = await self._instance_docs(study_uid, series_uid, sop_uid, projection)
        return [await dicom_meta.read(self._db, INSTANCES, d) for d in docs]

    async def _instance_docs(
        self, study: str, series: str | None, sop: str | None, projection: Doc
    ) -> list[Doc]:
        cursor = self._db[INSTANCES].find(_scope(study, series, sop), projection)
        docs = [d async for d in cursor]
        return sorted(docs, key=_instance_order)

    @mapped
    async def search(self, query: DicomQuery) -> DicomPage:
        return await run_search(self._db, query)


def _rekeyed(level: DicomLevel, doc: Doc, derive: KeyDeriver) -> Doc:
    """The match keys of ``doc`` (read with its ``attrs`` and ``mods``) derived anew."""
    keys = keys_doc(derive(level, doc["attrs"]))
    if level != "study":
        return {"keys": keys}
    # ModalitiesInStudy is the index's own aggregate, kept as it is
    mods = [{"k": MODALITIES_KEY, "v": m} for m in doc.get("mods", [])]
    kept = [k for k in keys if k["k"] != MODALITIES_KEY]
    return {"skeys": keys, "keys": kept + mods}


def _instance_order(doc: Doc) -> tuple[str, bool, int, str]:
    number = doc.get("num")
    return doc["series"], number is None, number or 0, doc["_id"]


def _scope(study: str, series: str | None, sop: str | None) -> Doc:
    where: Doc = {"study": study}
    if series is not None:
        where["series"] = series
    if sop is not None:
        where["_id"] = sop
    return where


@dataclass
class _Touched:
    """The series and studies a batch wrote to: recounted when it ends."""

    series: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)

    def add(self, planned: Sequence[Planned]) -> None:
        self.series.update(p.rec.series_uid for p in planned)
        self.studies.update(p.rec.study_uid for p in planned)
