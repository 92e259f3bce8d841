"""All-or-nothing writes on MongoDB without multi-document transactions.

A unit of work (a ``Store.transaction()`` or one ``write_many`` call) keeps one
document in ``journal`` -- the write-ahead log of what it is about to change:

1. Before anything is applied, the journal records each write's key, version
   and *before-image* (the ``resources`` document minus its body, which
   ``history`` keeps immutably). ``write_many`` records all of its writes in one
   atomic insert; a transaction appends each write (``$push``) before applying it.
2. Then the write is applied: a conditional replace of the ``resources``
   document filtered on the expected current version (an insert, refused by the
   unique ``_id``, for version 1), and an insert into ``history``, refused by the
   unique ``(type, id, version)`` index. Both carry ``tx: <journal id>``, which
   also *locks* the resource: other units of work treat a document marked by an
   unfinished journal as a version conflict. A ``write_many`` applies its writes
   in bulk, ``CHUNK`` at a time: one ordered ``insert_many`` of its new resources,
   one ordered ``bulk_write`` of its replaces (a resource written twice in the
   batch is replaced in turn, the second replace expecting the first's version;
   its insert, always its first write, comes before), one ``insert_many`` into
   ``history``. A duplicate key or a replace that matched nothing is a conflict.
3. Commit is one atomic update of the journal to ``state: committed`` -- the
   commit point. The markers are then removed and the journal deleted (tried
   again once; a clean-up that fails twice is logged and left to recovery).
4. Rollback (an exception, a conflict, a failed commit) restores every
   before-image in reverse order, deletes the unit's history rows, and deletes
   the journal. Each step is filtered on the unit's marker, so it is idempotent
   and never touches another writer's documents.

Recovery. A journal carries a lease (``expires``), renewed on every write of a
transaction and, while a unit applies, before each bulk write once a third of the
lease has passed (``renew``, so a batch may take longer than its lease). A
renewal, like a transaction's write, is a compare-and-set on ``state: pending``:
a unit that recovery has taken over stops writing (``StorageUnavailable``). A
journal whose lease ran out belongs to a crashed (or stalled) writer: recovery
rolls a ``pending`` one *back* -- it was never acknowledged -- and rolls a
``committed`` one *forward* (removes its markers). ``start()`` recovers, and so
does ``changes()`` when an expired journal holds the change log back. A
recoverer claims a journal with a compare-and-set, for a lease as long as a
writer's, so two instances never undo the same journal at once (a roll-back cut
short is taken over when that lease ends); a stalled owner then finds its
journal gone and fails its commit.

The change log. ``seq`` comes from one counter (``$inc``), taken while applying,
so a unit still in flight holds numbers that may later commit or vanish. Each
journal records ``floor``: the counter before it took any number. ``changes()``
returns only ``seq <= min(counter, every journal's floor)``, so a consumer never
sees an uncommitted version and never skips one that commits later. ``start()``
raises the counter to at least history's highest ``seq`` (``raise_counter``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from pymongo import DeleteOne, ReplaceOne, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from fhir_server.errors import StorageUnavailable, VersionConflict
from fhir_server.storage.base import NewVersion, StoredVersion
from fhir_server.storage.mongo.documents import (
    COUNTERS,
    HISTORY,
    JOURNAL,
    NO_BODY,
    RESOURCES,
    SEQ_COUNTER,
    Doc,
    history_doc,
    journal_entry,
    key_of,
    resource_doc,
    written,
)
from fhir_server.storage.mongo.errors import duplicate_key

Database = AsyncDatabase[Doc]
log = logging.getLogger(__name__)
_FINISH_TRIES = 2  # a committed unit's clean-up, tried again once at once
CHUNK = 1000  # versions applied by one round of bulk writes
RENEW_AFTER = 1 / 3  # of the lease: how much of it may pass before a unit renews it
Clock = Callable[[], float]
_LOST_LEASE = "the unit of work outlived its lease and was rolled back"


async def counter_value(db: Database) -> int:
    doc = await db[COUNTERS].find_one({"_id": SEQ_COUNTER})
    return int(doc["value"]) if doc else 0


async def raise_counter(db: Database) -> None:
    """Raise the change counter to at least the highest ``seq`` in history: a dump
    restored without point-in-time consistency may hold a counter behind it, and
    every write would then take a number already used (refused by the unique index)."""
    top = await db[HISTORY].find({}, {"seq": 1}).sort("seq", -1).limit(1).to_list(1)
    if top:
        update = {"$max": {"value": int(top[0]["seq"])}}
        await db[COUNTERS].update_one({"_id": SEQ_COUNTER}, update, upsert=True)


async def next_seqs(db: Database, n: int) -> list[int]:
    """Reserve ``n`` consecutive change sequence numbers."""
    doc = await db[COUNTERS].find_one_and_update(
        {"_id": SEQ_COUNTER},
        {"$inc": {"value": n}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:  # an upsert always returns the document
        raise StorageUnavailable("the change sequence counter did not answer")
    last = int(doc["value"])
    return list(range(last - n + 1, last + 1))


@dataclass(frozen=True, slots=True)
class _Apply:
    """One version to apply: what it replaces (None: nothing), its ``seq`` and ``pk``."""

    new: NewVersion
    before: Doc | None
    seq: int
    pk: int


class UnitOfWork:
    """One journalled unit of work; see the module docstring."""

    def __init__(self, db: Database, lease_seconds: float, clock: Clock = time.time) -> None:
        self.id = uuid4().hex
        self._db = db
        self._lease = lease_seconds
        self._clock = clock
        self._renewed = 0.0  # when the lease was last set
        self._entries: list[Doc] = []
        self._started = False
        self._committed = False

    @property
    def started(self) -> bool:
        return self._started

    async def write(self, new: NewVersion) -> StoredVersion:
        """Journal, then apply, one version."""
        key = key_of(new.resource_type, new.id)
        before = await self._db[RESOURCES].find_one({"_id": key}, NO_BODY)
        self._check(new, before)
        await self._record([journal_entry(new, before)])
        (seq,) = await next_seqs(self._db, 1)
        await self._apply([_Apply(new, before, seq, int(before["pk"]) if before else seq)])
        return written(new, seq)

    async def write_batch(self, news: Sequence[NewVersion]) -> list[StoredVersion]:
        """Journal all of ``news`` in one insert, then apply them in bulk, in order."""
        keys = [key_of(n.resource_type, n.id) for n in news]
        cursor = self._db[RESOURCES].find({"_id": {"$in": keys}}, NO_BODY)
        state: dict[str, Doc | None] = {d["_id"]: d for d in await cursor.to_list(None)}
        pks = {key: int(doc["pk"]) for key, doc in state.items() if doc is not None}
        befores: list[Doc | None] = []
        for key, new in zip(keys, news, strict=True):
            before = state.get(key)
            self._check(new, before)
            befores.append(before)
            # The before-image of a later write of the same resource in this batch.
            state[key] = {k: v for k, v in resource_doc(new, 0, 0, self.id).items() if k != "body"}
        await self._record([journal_entry(n, b) for n, b in zip(news, befores, strict=True)])
        seqs = await next_seqs(self._db, len(news)) if news else []
        applies = [
            _Apply(new, before, seq, pks.setdefault(key, seq))
            for key, new, before, seq in zip(keys, news, befores, seqs, strict=True)
        ]
        for start in range(0, len(applies), CHUNK):
            await self._apply(applies[start : start + CHUNK])
        return [written(n, s) for n, s in zip(news, seqs, strict=True)]

    def _check(self, new: NewVersion, before: Doc | None) -> None:
        key = key_of(new.resource_type, new.id)
        if before is not None and before.get("tx") not in (None, self.id):
            raise VersionConflict(f"{key} is being written by another transaction")
        have = int(before["version"]) if before else 0
        if new.version != have + 1:
            raise VersionConflict(f"{key} is at version {have}, cannot write version {new.version}")

    async def _record(self, entries: list[Doc]) -> None:
        now = self._clock()
        expires = now + self._lease
        journal = self._db[JOURNAL]
        if not self._started:
            floor = await counter_value(self._db)
            doc = {"_id": self.id, "state": "pending", "floor": floor, "expires": expires}
            self._entries.extend(entries)
            self._started = True
            await journal.insert_one({**doc, "entries": entries})
            self._renewed = now
            return
        self._entries.extend(entries)
        result = await journal.update_one(
            {"_id": self.id, "state": "pending"},
            {"$push": {"entries": {"$each": entries}}, "$set": {"expires": expires}},
        )
        if result.matched_count == 0:
            raise StorageUnavailable(_LOST_LEASE)
        self._renewed = now

    async def renew(self) -> None:
        """Extend the lease once ``RENEW_AFTER`` of it has passed; fail if recovery took
        the unit over meanwhile (it is being rolled back: nothing more may be written)."""
        now = self._clock()
        if now - self._renewed < self._lease * RENEW_AFTER:
            return
        result = await self._db[JOURNAL].update_one(
            {"_id": self.id, "state": "pending"}, {"$set": {"expires": now + self._lease}}
        )
        if result.matched_count == 0:
            raise StorageUnavailable(_LOST_LEASE)
        self._renewed = now

    async def _apply(self, applies: Sequence[_Apply]) -> None:
        """Apply journalled versions: a few bulk writes, whatever their number."""
        inserts = [resource_doc(a.new, a.seq, a.pk, self.id) for a in applies if a.before is None]
        replaces = [
            ReplaceOne(self._expected(a.new, a.before), resource_doc(a.new, a.seq, a.pk, self.id))
            for a in applies
            if a.before is not None
        ]
        try:
            if inserts:
                await self.renew()
                await self._db[RESOURCES].insert_many(inserts, ordered=True)
            if replaces:
                await self.renew()
                result = await self._db[RESOURCES].bulk_write(replaces, ordered=True)
                if result.matched_count != len(replaces):
                    raise _conflict(applies)
            await self.renew()
            history = [history_doc(a.new, a.seq, self.id) for a in applies]
            await self._db[HISTORY].insert_many(history, ordered=True)
        except PyMongoError as exc:
            if duplicate_key(exc):
                raise _conflict(applies) from exc
            raise

    def _expected(self, new: NewVersion, before: Doc) -> Doc:
        """What a replace of ``before`` matches: that version, unlocked or locked by us."""
        key = key_of(new.resource_type, new.id)
        return {"_id": key, "version": before["version"], "tx": {"$in": [None, self.id]}}

    async def commit(self) -> None:
        """Pass the commit point, then clean up (recovery finishes a cleanup cut short)."""
        if not self._started:
            return
        result = await self._db[JOURNAL].update_one(
            {"_id": self.id, "state": "pending"}, {"$set": {"state": "committed"}}
        )
        if result.matched_count == 0:
            raise StorageUnavailable(_LOST_LEASE)
        self._committed = True
        for attempt in range(_FINISH_TRIES):
            try:
                await finish(self._db, self.id)
                return
            except PyMongoError:  # (update_many is not a retryable write)
                if attempt + 1 == _FINISH_TRIES:  # committed all the same
                    log.warning(
                        "unit of work %s committed but its documents stay locked until"
                        " recovery finishes it, when its lease runs out",
                        self.id,
                        exc_info=True,
                    )

    async def rollback(self) -> None:
        if self._started and not self._committed:
            await undo(self._db, self.id, self._entries)


async def finish(db: Database, journal_id: str) -> None:
    """Roll a committed journal forward: unlock its documents and forget it."""
    await db[RESOURCES].update_many({"tx": journal_id}, {"$unset": {"tx": ""}})
    await db[HISTORY].update_many({"tx": journal_id}, {"$unset": {"tx": ""}})
    await db[JOURNAL].delete_one({"_id": journal_id})


def _conflict(applies: Sequence[_Apply]) -> VersionConflict:
    if len(applies) == 1:
        new = applies[0].new
        key = key_of(new.resource_type, new.id)
        return VersionConflict(f"{key} changed concurrently; version {new.version} refused")
    return VersionConflict(
        f"a resource of this batch of {len(applies)} changed concurrently; none is written"
    )


async def undo(db: Database, journal_id: str, entries: Sequence[Doc]) -> None:
    """Roll a journal back: restore before-images newest first, drop its history rows.

    One ordered bulk write: the restores newest first, then the deletes of the
    resources the unit created (a creation is a resource's first write in the unit, so
    its delete follows that resource's restores). Each is filtered on the unit's marker
    and the version it wrote, so a roll-back cut short can be run again."""
    bodies = await _bodies(db, [e for e in entries if e["before"] is not None])
    restores: list[ReplaceOne[Doc]] = []
    deletes: list[DeleteOne] = []
    for entry in reversed(entries):
        mine = {"_id": entry["k"], "version": entry["v"], "tx": journal_id}
        before: Doc | None = entry["before"]
        if before is None:
            deletes.append(DeleteOne(mine))
            continue
        body = bodies.get((entry["type"], entry["id"], before["version"]))
        restores.append(ReplaceOne(mine, {**before, "body": body}))
    if restores or deletes:
        await db[RESOURCES].bulk_write([*restores, *deletes], ordered=True)
    await db[HISTORY].delete_many({"tx": journal_id})
    await db[JOURNAL].delete_one({"_id": journal_id})


async def _bodies(db: Database, entries: Sequence[Doc]) -> dict[tuple[str, str, int], Any]:
    """The bodies of the before-images of ``entries``, from history, in one query."""
    if not entries:
        return {}
    wanted = [
        {"type": e["type"], "id": e["id"], "version": e["before"]["version"]} for e in entries
    ]
    projection = {"type": 1, "id": 1, "version": 1, "body": 1}
    found = await db[HISTORY].find({"$or": wanted}, projection).to_list(None)
    return {(d["type"], d["id"], int(d["version"])): d.get("body") for d in found}


async def recover(
    db: Database, lease_seconds: float, skip: Collection[str] = (), now: float | None = None
) -> int:
    """Finish every journal whose lease ran out by ``now`` (except ``skip``); returns how
    many. A roll-back takes a lease of ``lease_seconds`` on its journal: one cut short
    (the recoverer died, the server went away) is taken over when it ends."""
    now = time.time() if now is None else now
    done = 0
    for doc in await db[JOURNAL].find({"expires": {"$lt": now}}).to_list(None):
        if doc["_id"] in skip:
            continue
        if doc["state"] == "committed":
            await finish(db, doc["_id"])
        elif await _claim(db, doc, now + lease_seconds):
            await undo(db, doc["_id"], doc.get("entries", []))
        else:
            continue  # another recoverer took it
        done += 1
    return done


async def _claim(db: Database, doc: Doc, until: float) -> bool:
    """Take over an expired journal until ``until``, unless another recoverer just did."""
    result = await db[JOURNAL].update_one(
        {"_id": doc["_id"], "state": doc["state"], "expires": doc["expires"]},
        {"$set": {"state": "aborting", "expires": until}},
    )
    return result.matched_count == 1


async def change_cap(db: Database, now: float) -> tuple[int, bool]:
    """The highest ``seq`` the change log may show, and whether a journal expired by
    ``now`` holds it."""
    cap = await counter_value(db)
    stale = False
    journals: list[dict[str, Any]] = (
        await db[JOURNAL].find({}, {"floor": 1, "expires": 1}).to_list(None)
    )
    for doc in journals:
        cap = min(cap, int(doc["floor"]))
        stale = stale or float(doc["expires"]) < now
    return cap, stale
