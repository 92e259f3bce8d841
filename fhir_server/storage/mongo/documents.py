"""The shape of radhub's MongoDB documents, and conversions to and from the port's types.

``resources`` (one document per resource, ``_id`` = ``"Type/id"``)::

    {_id, type, id, version, lu, method, deleted, body, seq, pk,
     idx: {string: [{p, n, e}], token: [{p, s, c, t}], date: [{p, lo, hi}],
           number: [{p, v}], quantity: [{p, v, s, c, u}],
           reference: [{p, rt, ri, u, ver}], uri: [{p, u}],
           composite: [{p, c0: {...}, c1: {...}}]},
     sort: {param: {a: <ascending key>, d: <descending key>, m: 1}},
     tx: <journal id while a transaction that wrote it is unfinished>}

``history`` (one document per version)::

    {type, id, version, lu, method, body, seq, tx?}

``lu`` is microseconds since the epoch (BSON dates only keep milliseconds);
``pk`` is the ``seq`` of the resource's first version and breaks sort ties, as
the SQLite row id does. Index entries live inside the resource document, as in
Microsoft's FHIR server on Cosmos DB: one multikey index per value kind answers
an ``$elemMatch`` on ``(p, value...)``. ``sort`` holds precomputed sort keys
(min for ascending, max for descending), because a find cannot sort by an
aggregate of matching array elements.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server.search.dates import from_micros, to_micros
from fhir_server.search.registry import COLUMN_PARAMS
from fhir_server.search.values import (
    CompositeValue,
    DateRange,
    IndexEntry,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    Value,
)
from fhir_server.storage.base import Method, NewVersion, StoredVersion

Doc = dict[str, Any]

RESOURCES = "resources"
HISTORY = "history"
COUNTERS = "counters"
JOURNAL = "journal"
SEQ_COUNTER = "seq"

# The idx sub-array each parameter type's values live in.
KIND_OF_TYPE: dict[str, str] = {
    "string": "string",
    "token": "token",
    "date": "date",
    "number": "number",
    "quantity": "quantity",
    "reference": "reference",
    "uri": "uri",
    "composite": "composite",
}

# Everything but the body: what a before-image in the journal holds.
NO_BODY: Doc = {"body": 0}


def key_of(resource_type: str, id: str) -> str:
    return f"{resource_type}/{id}"


def value_fields(value: Value) -> tuple[str, Doc]:
    """The idx kind and the fields one value is stored as ("" for none)."""
    if isinstance(value, StringValue):
        return "string", {"n": value.normalized, "e": value.exact}
    if isinstance(value, TokenValue):
        return "token", {"s": value.system, "c": value.code, "t": value.text}
    if isinstance(value, DateRange):
        return "date", {"lo": value.low, "hi": value.high}
    if isinstance(value, QuantityValue):
        return "quantity", {"v": value.value, "s": value.system, "c": value.code, "u": value.unit}
    if isinstance(value, NumberValue):
        return "number", {"v": value.value}
    if isinstance(value, ReferenceValue):
        return "reference", {"rt": value.type, "ri": value.id, "u": value.url, "ver": value.version}
    if isinstance(value, UriValue):
        return "uri", {"u": value.uri}
    return "", {}  # nested composites do not occur in R4


def index_doc(entries: Iterable[IndexEntry]) -> Doc:
    """The ``idx`` sub-document of a resource."""
    idx: dict[str, list[Doc]] = {}
    for entry in entries:
        if entry.param in COLUMN_PARAMS:
            continue
        if isinstance(entry.value, CompositeValue):
            group: Doc = {"p": entry.param}
            for i, part in enumerate(entry.value.components):
                group[f"c{i}"] = value_fields(part)[1]
            idx.setdefault("composite", []).append(group)
            continue
        kind, fields = value_fields(entry.value)
        if kind:
            idx.setdefault(kind, []).append({"p": entry.param, **fields})
    return idx


def _sortable(value: Value) -> tuple[Any, Any] | None:
    """(ascending key, descending key) of one value, as ``match.sort_value`` orders."""
    if isinstance(value, StringValue):
        return value.normalized, value.normalized
    if isinstance(value, TokenValue):
        return None if value.code is None else (value.code, value.code)
    if isinstance(value, DateRange):
        return value.low, value.high
    if isinstance(value, NumberValue | QuantityValue):
        return value.value, value.value
    if isinstance(value, ReferenceValue):
        if value.type is None or value.id is None:
            return None
        text = f"{value.type}/{value.id}"
        return text, text
    if isinstance(value, UriValue):
        return value.uri, value.uri
    return None


def sort_doc(entries: Iterable[IndexEntry]) -> Doc:
    """The ``sort`` sub-document: per parameter, min ascending and max descending keys."""
    keys: dict[str, Doc] = {}
    for entry in entries:
        pair = None if entry.param in COLUMN_PARAMS else _sortable(entry.value)
        if pair is None:
            continue
        seen = keys.get(entry.param)
        if seen is None:
            keys[entry.param] = {"a": pair[0], "d": pair[1], "m": 1}
        else:
            seen["a"] = min(seen["a"], pair[0])
            seen["d"] = max(seen["d"], pair[1])
    return keys


def resource_doc(new: NewVersion, seq: int, pk: int, tx: str | None) -> Doc:
    """The ``resources`` document of ``new`` once written with change sequence ``seq``."""
    deleted = new.method == "delete"
    doc: Doc = {
        "_id": key_of(new.resource_type, new.id),
        "type": new.resource_type,
        "id": new.id,
        "version": new.version,
        "lu": to_micros(new.last_updated),
        "method": new.method,
        "deleted": deleted,
        "body": new.body,
        "seq": seq,
        "pk": pk,
        "idx": {} if deleted else index_doc(new.index),
        "sort": {} if deleted else sort_doc(new.index),
    }
    if tx is not None:
        doc["tx"] = tx
    return doc


def history_doc(new: NewVersion, seq: int, tx: str | None) -> Doc:
    doc: Doc = {
        "type": new.resource_type,
        "id": new.id,
        "version": new.version,
        "lu": to_micros(new.last_updated),
        "method": new.method,
        "body": new.body,
        "seq": seq,
    }
    if tx is not None:
        doc["tx"] = tx
    return doc


def stored(doc: Doc) -> StoredVersion:
    """A ``resources`` or ``history`` document as a stored version."""
    body = doc.get("body")
    method: Method = doc["method"]
    return StoredVersion(
        resource_type=doc["type"],
        id=doc["id"],
        version=int(doc["version"]),
        last_updated=from_micros(int(doc["lu"])),
        method=method,
        body=bytes(body) if body is not None else None,
        seq=int(doc.get("seq", 0)),
    )


def written(new: NewVersion, seq: int) -> StoredVersion:
    """What a successful write of ``new`` returns."""
    return StoredVersion(
        new.resource_type, new.id, new.version, new.last_updated, new.method, new.body, seq
    )


def journal_entry(new: NewVersion, before: Doc | None) -> Doc:
    """What the journal keeps to undo one write: its key and the before-image."""
    return {
        "k": key_of(new.resource_type, new.id),
        "type": new.resource_type,
        "id": new.id,
        "v": new.version,
        "before": before,
    }
