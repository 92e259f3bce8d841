"""Large WADO-RS metadata kept beside its instance document, in chunks.

An instance document holds the instance's DICOM JSON twice: ``attrs`` (for QIDO)
and ``meta`` (its precomputed WADO-RS metadata). An enhanced multi-frame
instance's functional groups make both large -- 9.8 MB and 7.8 MB for an
enhanced CT of 8,000 frames -- past the 16 MiB one document holds. So metadata
of more than ``INLINE`` bytes is kept in ``dicom_meta_chunks`` instead, as
documents ``{sop, v, i, data}`` of at most ``CHUNK`` bytes each; ``v`` is the
version (the start of the instance's SHA-256), which the instance document
names (``metav``, with the number of chunks, ``metan``) in place of ``meta``.

The chunks of a version are written before the instance document that names
them, and the other versions' chunks removed after it: a write that fails
part-way leaves the stored version whole, and at most chunks nothing names,
removed by the next write or the delete of that instance. A reader that finds
fewer chunks than its document names raced an overwrite, and reads again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel

from fhir_server.errors import StorageUnavailable
from fhir_server.storage.dicom_port import InstanceRecord
from fhir_server.storage.mongo.journal import Database

CHUNKS = "dicom_meta_chunks"
INLINE = 1024 * 1024
CHUNK = 4 * 1024 * 1024
INDEXES = [IndexModel([("sop", ASCENDING), ("v", ASCENDING), ("i", ASCENDING)])]
FIELDS = {"meta": 1, "metav": 1, "metan": 1}  # what reading an instance's metadata needs
_READS = 3
Doc = dict[str, Any]


def fields(rec: InstanceRecord) -> Doc:
    """The instance document's metadata fields: the metadata, or its chunks' names."""
    if len(rec.metadata) <= INLINE:
        return {"meta": rec.metadata}
    count = -(-len(rec.metadata) // CHUNK)
    return {"meta": None, "metav": rec.blob.sha256[:16], "metan": count}


async def write(db: Database, rec: InstanceRecord, named: Doc) -> None:
    """Write the chunks ``named`` (``fields``) names, if any, replacing a failed try's."""
    version = named.get("metav")
    if version is None:
        return
    await db[CHUNKS].delete_many({"sop": rec.sop_uid, "v": version})
    data = rec.metadata
    await db[CHUNKS].insert_many(
        {"sop": rec.sop_uid, "v": version, "i": n, "data": data[start : start + CHUNK]}
        for n, start in enumerate(range(0, len(data), CHUNK))
    )


async def drop_others(db: Database, named: Sequence[tuple[str, Doc]]) -> None:
    """Remove the chunks of each ``(sop_uid, fields)`` but those its ``fields`` name (once
    its instance document is written), in one command."""
    wanted: list[Doc] = []
    for sop_uid, fields in named:
        where: Doc = {"sop": sop_uid}
        if fields.get("metav") is not None:
            where["v"] = {"$ne": fields["metav"]}
        wanted.append(where)
    if wanted:
        await db[CHUNKS].delete_many({"$or": wanted})


async def drop(db: Database, sop_uids: list[str]) -> None:
    """Remove every chunk of ``sop_uids`` (once their instance documents are gone)."""
    if sop_uids:
        await db[CHUNKS].delete_many({"sop": {"$in": sop_uids}})


async def read(db: Database, instances: str, doc: Doc) -> bytes:
    """The metadata of the instance document ``doc`` (read with ``FIELDS``), from
    ``doc`` itself or its chunks; re-reads ``doc`` if an overwrite raced this read."""
    for _ in range(_READS):
        if doc.get("metav") is None:
            return bytes(doc["meta"])
        where = {"sop": doc["_id"], "v": doc["metav"]}
        found = await db[CHUNKS].find(where).sort("i", ASCENDING).to_list(None)
        if len(found) == doc["metan"]:
            return b"".join(bytes(chunk["data"]) for chunk in found)
        again = await db[instances].find_one({"_id": doc["_id"]}, FIELDS)
        if again is None:
            break
        doc = again
    raise StorageUnavailable("an instance's metadata changed while it was read; try again")
