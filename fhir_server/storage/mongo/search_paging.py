"""Sort keys and keyset paging for MongoDB search.

A page is the next ``count`` documents strictly after (or before) the boundary
document the cursor names, in the total order (sort keys..., pk). Resources
without a value for a sort parameter come last in either direction: each
parameter key sorts first on its presence flag ``sort.<param>.m``. The cursor
is an opaque token holding the boundary and a fingerprint of the sort it was
made for, so a cursor cannot be replayed against a different order.
See https://hl7.org/fhir/R4/search.html#sort and https://hl7.org/fhir/R4/http.html#paging
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import SearchQuery, SortKey
from fhir_server.search.cursor import Cursor
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.mongo.documents import Doc

SORTABLE_TYPES = frozenset({"string", "token", "date", "number", "quantity", "reference", "uri"})


@dataclass(frozen=True, slots=True)
class SortField:
    field: str
    descending: bool
    nullable: bool  # the flag field, sorting present values first, when not None
    flag: str | None = None


def sort_fields(query: SearchQuery, registry: SearchRegistry) -> list[SortField]:
    """The fields ``query`` orders by (default: last updated first)."""
    keys = query.sort or (SortKey("_lastUpdated"),)
    types = query.types or registry.types
    return [_sort_field(key, types, registry) for key in keys]


def _sort_field(key: SortKey, types: tuple[str, ...], registry: SearchRegistry) -> SortField:
    if key.param == "_id":
        return SortField("id", key.descending, False)
    if key.param == "_lastUpdated":
        return SortField("lu", key.descending, False)
    param = registry.common_param(types, key.param)
    if param is None or param.type not in SORTABLE_TYPES:
        raise InvalidSearch(f"Cannot sort on {key.param!r}")
    side = "d" if key.descending else "a"
    return SortField(f"sort.{key.param}.{side}", key.descending, True, f"sort.{key.param}.m")


def sort_spec(fields: list[SortField], forward: bool) -> list[tuple[str, int]]:
    spec: list[tuple[str, int]] = []
    for f in fields:
        if f.flag is not None:
            spec.append((f.flag, -1 if forward else 1))
        ascending = f.descending != forward
        spec.append((f.field, 1 if ascending else -1))
    spec.append(("pk", 1 if forward else -1))
    return spec


def boundary(doc: Doc, fields: list[SortField]) -> tuple[Any, ...]:
    """A document's sort keys and pk, as a cursor keeps them."""
    return (*(_get(doc, f.field) for f in fields), int(doc["pk"]))


def _get(doc: Doc, dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def beyond(fields: list[SortField], cursor: Cursor) -> Doc:
    """Documents strictly after (``cursor.forward``) or before the cursor's boundary."""
    equal: list[Doc] = []
    options: list[Doc] = []
    for i, f in enumerate(fields):
        past, same = _key_step(f, cursor.values[i], cursor.forward)
        if past is not None:
            options.append({"$and": [*equal, past]})
        equal.append(same)
    pk_op = "$gt" if cursor.forward else "$lt"
    options.append({"$and": [*equal, {"pk": {pk_op: cursor.values[-1]}}]})
    return {"$or": options}


def _key_step(f: SortField, value: Any, forward: bool) -> tuple[Doc | None, Doc]:
    """(strictly past the boundary on this key or None for nothing, equal on this key)."""
    if value is None:
        # Missing values come last: nothing is past one going forward, every value going back.
        return (None if forward else {f.field: {"$ne": None}}), {f.field: None}
    op = "$gt" if f.descending != forward else "$lt"
    past: Doc = {f.field: {op: value}}
    if forward and f.nullable:
        past = {"$or": [past, {f.field: None}]}
    return past, {f.field: value}
