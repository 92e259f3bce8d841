"""How the MongoDB DICOM index writes a batch of instances: a few bulk writes.

1. ``read_known``: the batch's stored instances, series and studies, in three
   queries (by ``_id``).
2. ``plan``: each record in turn against what is known -- an identical re-send is a
   ``duplicate``; a different instance under a stored SOP Instance UID (without
   ``overwrite``), or a series under another study, a ``conflict``; a study of
   another patient ``other-patient``; a document too large ``unindexable`` -- and
   what it writes becomes known to the records after it, as one by one.
3. ``write_parents``: the studies (a compare-and-set on each one's revision and
   patient), then the series (on each one's revision), one bulk upsert each, all
   marked dirty; when one of them had changed since step 1, steps 1-3 again.
4. ``write_instances``: every instance document in one bulk write, so none is
   written before its parents.

A study or series takes in its instances' attributes by a merge (``dicom_merge``):
each attribute an instance carries a value of is ``$set`` on its own path
(``attrs.GGGGEEEE``), so two servers storing instances of one study at once each
replace only what theirs carry, and none puts back an older whole. The empty ones
go in with ``$setOnInsert``: a new row takes them, a stored value stays. The
row's match keys are merged in ``plan`` from the ones ``read_known`` read and set
whole, so each parent write is a compare-and-set on the row's revision (``rev``,
which every write to the row raises): another radhub instance on the same database
may have merged other attributes into the row since ``read_known``, and setting
keys merged from what was read would drop that instance's changes to them. A
write that finds the row moved on writes nothing (the server refuses the upsert's
insert by the unique ``_id``), and the batch is read and planned again on what is
stored now (``write_parents``).

An instance document is written by a compare-and-set: an insert, refused by the
unique ``_id``, when none was stored, or a replace filtered on the stored version's
blob key. Another radhub instance on the same database may store the same SOP
Instance UID in between; the write then finds what that instance stored: the same
bytes are a ``duplicate``, others a ``conflict`` -- the outcomes a re-send gets when
the first one has finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from fhir_server.storage.dicom_merge import canonical_keys, carried, merge_keys
from fhir_server.storage.dicom_port import (
    DicomLevel,
    InstanceRecord,
    Json,
    MatchKeys,
    StoreOutcome,
    StoreResult,
)
from fhir_server.storage.mongo import dicom_meta
from fhir_server.storage.mongo.dicom_search import INSTANCES, SERIES, STUDIES, Doc, blob_location
from fhir_server.storage.mongo.errors import duplicate_key, unstorable
from fhir_server.storage.mongo.journal import Database

REVISION = "rev"  # raised by every write to a study or series: their compare-and-set


def revision_filter(revision: int | None) -> Doc:
    """The filter of a write to a row read at ``revision`` (None: the row was not
    stored, or has no revision yet). Not an equality on a missing one: an upsert
    would copy ``rev: null`` into the document it inserts, where ``$inc`` fails."""
    return {REVISION: {"$exists": False} if revision is None else revision}


def keys_doc(keys: MatchKeys) -> list[Doc]:
    """Match keys as stored: ``[{k, v}]``, without repeats."""
    return [{"k": k, "v": v} for k, v in dict.fromkeys(keys)]


def _instance_doc(rec: InstanceRecord) -> Doc:
    return {
        "_id": rec.sop_uid, "series": rec.series_uid, "study": rec.study_uid,
        "attrs": rec.instance_attrs, "ts": rec.transfer_syntax_uid,
        "blob": {"key": rec.blob.key, "size": rec.blob.size, "sha": rec.blob.sha256},
        "num": rec.instance_number, "extra": rec.extra, "keys": keys_doc(rec.instance_keys),
        **dicom_meta.fields(rec),
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ParentSet:
    """What one record writes to its study or series (``dicom_merge``): the attributes
    it carries a value of, each set on its own path so that what a concurrent writer
    set of the others stays; the ones it carries empty, which only a new row takes;
    and the row's other fields (its match keys merged, its patient, the dirty mark)."""

    values: Doc
    empty: Doc
    fields: Doc

    def doc(self) -> Doc:
        """About the document it makes (what ``unstorable`` weighs)."""
        return {"attrs": {**self.empty, **self.values}, **self.fields}


@dataclass(frozen=True, slots=True)
class Merged:
    """One record's attributes and keys (``received``) merged into its study's or
    series' row: what they write to it (``ParentSet.fields`` holds the keys alone),
    and the row's match keys then."""

    received: tuple[Json, MatchKeys]
    write: ParentSet
    keys: MatchKeys


def _merged(known: Known, level: DicomLevel, uid: str, attrs: Json, keys: MatchKeys) -> Merged:
    """``attrs`` and ``keys`` merged into the row ``uid`` as ``known`` has it (as read,
    or as the batch's records before left it). The same attributes and keys as the
    batch's last record for the row come to the same (a merge is idempotent): the
    usual batch, one study's instances, merges once per row."""
    received = (attrs, keys)
    last = known.received.get((level, uid))
    if last is not None and last.received == received:
        return last
    carries = carried(attrs, keys)
    merged = merge_keys(known.keys[level].get(uid, ()), keys, carries)
    values = {tag: element for tag, element in attrs.items() if tag in carries}
    empty = {tag: element for tag, element in attrs.items() if tag not in carries}
    field = "skeys" if level == "study" else "keys"
    return Merged(received, ParentSet(values, empty, {field: keys_doc(merged)}), merged)


def _study_set(rec: InstanceRecord, merged: Merged, set_key: bool) -> ParentSet:
    fields: Doc = {**merged.write.fields, "dirty": True}  # until the index has recounted it
    if rec.patient_ref is not None:
        fields["patient"] = rec.patient_ref
    if set_key and rec.patient_key is not None:
        fields["pkey"] = rec.patient_key  # the study's first patient stays its patient
    return ParentSet(merged.write.values, merged.write.empty, fields)


def _series_set(rec: InstanceRecord, merged: Merged) -> ParentSet:
    # dirty until the index has recounted it and its study
    fields: Doc = {**merged.write.fields, "study": rec.study_uid, "dirty": True}
    if rec.modality:  # (an instance without one leaves the series' as it is)
        fields["modality"] = rec.modality
    return ParentSet(merged.write.values, merged.write.empty, fields)


def _update(sets: Sequence[ParentSet]) -> Doc:
    """The update of a row that ``sets`` write to in turn: the attributes they carry a
    value of set, the last one's where several do; the ones they carry empty only on
    a new row (``$setOnInsert``), not over a value."""
    values: Doc = {}
    empty: Doc = {}
    fields: Doc = {}
    last: ParentSet | None = None
    for s in sets:
        if last is None or s.values is not last.values or s.empty is not last.empty:
            values.update(s.values)  # (a batch's records of one row mostly share them)
            empty.update(s.empty)
        fields.update(s.fields)
        last = s
    update: Doc = {"$set": {**{f"attrs.{t}": e for t, e in values.items()}, **fields}}
    update["$inc"] = {REVISION: 1}
    on_insert = {f"attrs.{t}": e for t, e in empty.items() if t not in values}
    if not values and not on_insert:
        on_insert = {"attrs": {}}
    if on_insert:
        update["$setOnInsert"] = on_insert
    return update


@dataclass
class Known:
    """What the index holds for a batch's UIDs, and then what the batch will write."""

    instances: dict[str, Doc] = field(default_factory=dict)  # SOP UID -> {blob, series}
    series: dict[str, str] = field(default_factory=dict)  # series UID -> its study's UID
    patients: dict[str, Any] = field(default_factory=dict)  # study UID -> its patient key
    # study and series UID -> its own match keys
    keys: dict[DicomLevel, dict[str, MatchKeys]] = field(
        default_factory=lambda: {"study": {}, "series": {}}
    )
    # study and series UID -> its revision as read (``REVISION``)
    revisions: dict[DicomLevel, dict[str, int]] = field(
        default_factory=lambda: {"study": {}, "series": {}}
    )
    # the attributes and keys the batch's last record for a row had, what they wrote
    received: dict[tuple[DicomLevel, str], Merged] = field(default_factory=dict)

    def take(self, level: DicomLevel, uid: str, merged: Merged) -> None:
        """Record that the batch writes ``merged`` to the row ``uid``."""
        self.keys[level][uid] = merged.keys
        self.received[(level, uid)] = merged


@dataclass(frozen=True, slots=True)
class Planned:
    """An instance the batch writes, with its parents' updates and what it replaces."""

    rec: InstanceRecord
    study_set: ParentSet
    series_set: ParentSet
    instance: Doc
    old: Doc | None  # the stored instance's {_id, blob, series}, if one is replaced


async def read_known(db: Database, records: Sequence[InstanceRecord]) -> Known:
    """What the index holds of ``records``' instances, series and studies."""

    async def read(collection: str, uids: set[str], projection: Doc) -> list[Doc]:
        found = db[collection].find({"_id": {"$in": sorted(uids)}}, projection)
        return [doc async for doc in found]

    instances = await read(INSTANCES, {r.sop_uid for r in records}, {"blob": 1, "series": 1})
    series_fields = {"study": 1, "keys": 1, REVISION: 1}
    series = await read(SERIES, {r.series_uid for r in records}, series_fields)
    study_fields = {"pkey": 1, "skeys": 1, REVISION: 1}
    studies = await read(STUDIES, {r.study_uid for r in records}, study_fields)
    return Known(
        {d["_id"]: d for d in instances},
        {d["_id"]: d["study"] for d in series},
        {d["_id"]: d.get("pkey") for d in studies},
        {"study": _keys_of(studies, "skeys"), "series": _keys_of(series, "keys")},
        {"study": _revisions_of(studies), "series": _revisions_of(series)},
    )


def _revisions_of(docs: Sequence[Doc]) -> dict[str, int]:
    return {d["_id"]: d[REVISION] for d in docs if d.get(REVISION) is not None}


def _keys_of(docs: Sequence[Doc], name: str) -> dict[str, MatchKeys]:
    """Each document's match keys (a study's own, ``skeys``: not its aggregates)."""
    return {d["_id"]: canonical_keys((k["k"], k["v"]) for k in d.get(name, ())) for d in docs}


def plan(
    rec: InstanceRecord, overwrite: bool, known: Known, seen: set[str]
) -> StoreResult | Planned:
    """What storing ``rec`` comes to; ``seen`` collects the series of duplicates."""
    old = known.instances.get(rec.sop_uid)
    if old is not None and old["blob"]["sha"] == rec.blob.sha256:
        seen.add(old["series"])
        return StoreResult(rec.sop_uid, "duplicate")
    parent = known.series.get(rec.series_uid)
    if (old is not None and not overwrite) or parent not in (None, rec.study_uid):
        return StoreResult(rec.sop_uid, "conflict")
    patient = known.patients.get(rec.study_uid)
    if patient is not None and patient != rec.patient_key:
        return StoreResult(rec.sop_uid, "other-patient")
    study = _merged(known, "study", rec.study_uid, rec.study_attrs, rec.study_keys)
    series = _merged(known, "series", rec.series_uid, rec.series_attrs, rec.series_keys)
    study_set, series_set = _study_set(rec, study, patient is None), _series_set(rec, series)
    instance = _instance_doc(rec)
    why = unstorable(study_set.doc(), series_set.doc(), instance)
    if why is not None:  # refused before anything of it is written
        return StoreResult(rec.sop_uid, "unindexable", detail=why)
    known.take("study", rec.study_uid, study)
    known.take("series", rec.series_uid, series)
    known.instances[rec.sop_uid] = {
        "_id": rec.sop_uid,
        "blob": instance["blob"],
        "series": rec.series_uid,
    }
    known.series[rec.series_uid] = rec.study_uid
    if patient is None and rec.patient_key is not None:
        known.patients[rec.study_uid] = rec.patient_key
    return Planned(rec, study_set, series_set, instance, old)


@dataclass(frozen=True, slots=True)
class ParentsWritten:
    """What ``write_parents`` wrote: the studies and series, and whether that was all
    of the batch's (else the batch is planned again: ``moved``)."""

    studies: set[str]
    series: set[str]
    moved: bool


async def write_parents(db: Database, planned: Sequence[Planned], known: Known) -> ParentsWritten:
    """Upsert the studies and then the series of ``planned``, each parent once, with
    what the batch's records set on it in turn, each marked dirty until the index
    recounts it; each write a compare-and-set on the row's revision as ``known``.

    A write that meets a row another radhub instance on the database wrote to since
    ``read_known`` writes nothing; the server refuses the upsert's insert by the
    unique ``_id``. So does a study's write when that instance has started the same
    new study meanwhile, for another patient (a study's write is filtered on its
    patient key too: no key or the batch's) or for this one. Either way the result
    is ``moved``, and the batch is to be read and planned again on what is stored
    now, where a study of another patient is ``other-patient`` (``plan``). The
    studies go first and the series only when all studies were written, so that a
    batch refused as another patient's writes nothing of that study: a series of
    the other instance's, empty until its instances land, is neither written to nor
    recounted (and removed) from here."""
    studies: dict[str, list[ParentSet]] = {}
    keys: dict[str, str | None] = {}  # study -> its records' patient (``plan`` lets in one)
    for p in planned:
        studies.setdefault(p.rec.study_uid, []).append(p.study_set)
        keys[p.rec.study_uid] = p.rec.patient_key or keys.get(p.rec.study_uid)
    study_writes = {
        uid: UpdateOne(
            {"_id": uid, "pkey": {"$in": [None, keys[uid]]}, **_revision(known, "study", uid)},
            _update(sets),
            upsert=True,
        )
        for uid, sets in studies.items()
    }
    refused = await _compare_and_set(db[STUDIES], study_writes)
    if refused:
        return ParentsWritten(set(studies) - refused, set(), moved=True)
    series: dict[str, list[ParentSet]] = {}
    for p in planned:
        series.setdefault(p.rec.series_uid, []).append(p.series_set)
    series_writes = {
        uid: UpdateOne({"_id": uid, **_revision(known, "series", uid)}, _update(sets), upsert=True)
        for uid, sets in series.items()
    }
    refused = await _compare_and_set(db[SERIES], series_writes)
    return ParentsWritten(set(studies), set(series) - refused, moved=bool(refused))


def _revision(known: Known, level: DicomLevel, uid: str) -> Doc:
    return revision_filter(known.revisions[level].get(uid))


async def _compare_and_set(collection: Any, writes: dict[str, UpdateOne]) -> set[str]:
    """Run ``writes`` (by UID) in one unordered bulk write; the UIDs whose filter matched
    no document, which the unique ``_id`` then refused as an insert."""
    uids = list(writes)
    try:
        await collection.bulk_write(list(writes.values()), ordered=False)
    except BulkWriteError as exc:
        if not duplicate_key(exc):
            raise
        return {uids[int(e["index"])] for e in exc.details["writeErrors"]}
    return set()


async def write_instances(db: Database, planned: Sequence[Planned]) -> list[StoreResult]:
    """Write the instance documents of ``planned`` (their metadata chunks before, the
    replaced versions' after) and return what became of each."""
    for p in planned:
        await dicom_meta.write(db, p.rec, p.instance)
    outcomes: dict[int, StoreResult] = {}
    for wave in _waves(planned):
        for p, result in zip(wave, await _put(db, wave), strict=True):
            outcomes[id(p)] = result
    results = [outcomes[id(p)] for p in planned]
    replaced = zip(planned, results, strict=True)
    await dicom_meta.drop_others(
        db, [(p.rec.sop_uid, p.instance) for p, r in replaced if r.outcome == "replaced"]
    )
    return results


def _waves(planned: Sequence[Planned]) -> list[list[Planned]]:
    """``planned`` in bulk writes of distinct SOP Instance UIDs: a batch that holds one
    UID twice writes its second version in a second bulk write, after the first."""
    waves: list[list[Planned]] = []
    seen: dict[str, int] = {}
    for p in planned:
        n = seen.get(p.rec.sop_uid, 0)
        seen[p.rec.sop_uid] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(p)
    return waves


async def _put(db: Database, wave: Sequence[Planned]) -> list[StoreResult]:
    """One unordered bulk write of distinct instance documents, each a compare-and-set
    (inserts, then replaces filtered on the replaced version's blob key)."""
    inserts = [p for p in wave if p.old is None]
    replaces = [p for p in wave if p.old is not None]
    ops: list[InsertOne[Doc] | ReplaceOne[Doc]] = [InsertOne(p.instance) for p in inserts]
    ops += [
        ReplaceOne({"_id": p.rec.sop_uid, "blob.key": _key(p.old)}, p.instance) for p in replaces
    ]
    refused: set[int] = set()  # the inserts the unique _id refused
    try:
        matched = (await db[INSTANCES].bulk_write(ops, ordered=False)).matched_count
    except BulkWriteError as exc:
        if not duplicate_key(exc):
            raise
        refused = {int(e["index"]) for e in exc.details["writeErrors"]}
        matched = int(exc.details.get("nMatched", 0))
    lost = [p for i, p in enumerate(inserts) if i in refused]
    unsure = replaces if matched != len(replaces) else []
    now = await _stored_blobs(db, [*lost, *unsure]) if lost or unsure else {}
    results = {id(p): _lost(p, now.get(p.rec.sop_uid)) for p in lost}
    for p in unsure:  # a replace that matched nothing was not written
        ours = now.get(p.rec.sop_uid, {}).get("key") == p.instance["blob"]["key"]
        results[id(p)] = _written(p) if ours else _lost(p, now.get(p.rec.sop_uid))
    return [results.get(id(p)) or _written(p) for p in wave]


def _key(old: Doc | None) -> Any:
    return None if old is None else old["blob"]["key"]


async def _stored_blobs(db: Database, planned: Sequence[Planned]) -> dict[str, Doc]:
    """The blobs ``planned``'s UIDs name now: what another writer stored meanwhile."""
    found = db[INSTANCES].find({"_id": {"$in": [p.rec.sop_uid for p in planned]}}, {"blob": 1})
    return {doc["_id"]: doc["blob"] async for doc in found}


def _written(p: Planned) -> StoreResult:
    if p.old is None:
        return StoreResult(p.rec.sop_uid, "stored")
    return StoreResult(p.rec.sop_uid, "replaced", blob_location(p.old))


def _lost(p: Planned, blob: Doc | None) -> StoreResult:
    """``p``, not written because another writer stored its UID first (``blob``; None
    if it was then deleted): a duplicate if that is the same instance, else a conflict."""
    same = blob is not None and blob["sha"] == p.rec.blob.sha256
    outcome: StoreOutcome = "duplicate" if same else "conflict"
    return StoreResult(p.rec.sop_uid, outcome)
