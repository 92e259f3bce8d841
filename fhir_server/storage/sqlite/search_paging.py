"""Sort keys and keyset paging for SQLite search.

A page is the next ``count`` rows strictly after (or before) the boundary row
the cursor names, in the total order (sort keys..., pk). Resources without a
value for a sort parameter come last in either direction. The cursor is an
opaque token holding that boundary and a fingerprint of the sort it was made
for, so a cursor cannot be replayed against a different order.
See https://hl7.org/fhir/R4/search.html#sort and https://hl7.org/fhir/R4/http.html#paging
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, cast

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import SearchQuery, SortKey
from fhir_server.search.cursor import Cursor, decode_cursor, encode_cursor
from fhir_server.search.dates import from_micros
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import StoredVersion
from fhir_server.storage.sqlite.search_compile import TABLE_OF_TYPE, Frag, join

Row = tuple[Any, ...]
# Row layout: pk, type, id, version, last_updated, body, then one column per sort key.
SELECT_COLUMNS = "r.pk, r.type, r.id, r.version, r.last_updated, r.body"
KEY_OFFSET = 6

# The value a sort on a parameter of each type orders by.
SORT_VALUE: dict[str, str] = {
    "string": "norm",
    "token": "code",
    "number": "value",
    "quantity": "value",
    "reference": "ref_type || '/' || ref_id",
    "uri": "uri",
}


@dataclass(frozen=True, slots=True)
class SortColumn:
    expr: Frag
    descending: bool
    nullable: bool


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    next_cursor: str | None
    previous_cursor: str | None


def row_version(row: Row) -> StoredVersion:
    """A ``resources`` row as the current version of a resource."""
    body = row[5]
    if isinstance(body, str):
        body = body.encode()
    version = int(row[3])
    return StoredVersion(
        resource_type=row[1],
        id=row[2],
        version=version,
        last_updated=from_micros(int(row[4])),
        method="update" if version > 1 else "create",
        body=body,
    )


def sort_columns(query: SearchQuery, registry: SearchRegistry) -> list[SortColumn]:
    """The ORDER BY columns for ``query`` (default: last updated first)."""
    keys = query.sort or (SortKey("_lastUpdated"),)
    types = query.types or registry.types
    return [_sort_column(key, types, registry) for key in keys]


def _sort_column(key: SortKey, types: tuple[str, ...], registry: SearchRegistry) -> SortColumn:
    if key.param == "_id":
        return SortColumn(Frag("r.id"), key.descending, False)
    if key.param == "_lastUpdated":
        return SortColumn(Frag("r.last_updated"), key.descending, False)
    param = registry.common_param(types, key.param)
    if param is None or (param.type not in SORT_VALUE and param.type != "date"):
        raise InvalidSearch(f"Cannot sort on {key.param!r}")
    table = TABLE_OF_TYPE[param.type]
    agg = "MAX" if key.descending else "MIN"
    if param.type == "date":
        value = "high" if key.descending else "low"
    else:
        value = SORT_VALUE[param.type]
    sql = f"(SELECT {agg}({value}) FROM {table} s WHERE s.pk = r.pk AND s.param = ?)"
    return SortColumn(Frag(sql, (key.param,)), key.descending, True)


def order_by(columns: list[SortColumn], forward: bool) -> str:
    terms: list[str] = []
    for i, col in enumerate(columns):
        if col.nullable:
            terms.append(f"(k{i} IS NULL) {'ASC' if forward else 'DESC'}")
        ascending = col.descending != forward
        terms.append(f"k{i} {'ASC' if ascending else 'DESC'}")
    terms.append(f"pk {'ASC' if forward else 'DESC'}")
    return ", ".join(terms)


def beyond(columns: list[SortColumn], cursor: Cursor) -> Frag:
    """Rows strictly after (``cursor.forward``) or before the cursor's boundary row."""
    equal: list[Frag] = []
    options: list[Frag] = []
    for i, col in enumerate(columns):
        value = cursor.values[i]
        past, same = _key_step(f"k{i}", value, col, cursor.forward)
        options.append(join(" AND ", [*equal, past]))
        equal.append(same)
    pk_past = Frag(f"pk {'>' if cursor.forward else '<'} ?", (cursor.values[-1],))
    options.append(join(" AND ", [*equal, pk_past]))
    either = join(" OR ", [Frag(f"({o.sql})", o.args) for o in options])
    return _with_range_hint(columns, cursor, either)


def _key_step(name: str, value: Any, col: SortColumn, forward: bool) -> tuple[Frag, Frag]:
    """(strictly past the boundary on this key, equal to it on this key)."""
    if value is None:
        # Nulls come last: nothing is past a null going forward; every non-null is going back.
        return Frag("0" if forward else f"{name} IS NOT NULL"), Frag(f"{name} IS NULL")
    greater = col.descending != forward
    past = Frag(f"{name} {'>' if greater else '<'} ?", (value,))
    if forward and col.nullable:
        past = Frag(f"({past.sql} OR {name} IS NULL)", past.args)
    return past, Frag(f"{name} = ?", (value,))


def _with_range_hint(columns: list[SortColumn], cursor: Cursor, either: Frag) -> Frag:
    # A bound on the leading key lets SQLite start the index range at the boundary.
    first = columns[0]
    if first.nullable or cursor.values[0] is None:
        return either
    op = ">=" if first.descending != cursor.forward else "<="
    hint = Frag(f"k0 {op} ?", (cursor.values[0],))
    return join(" AND ", [hint, Frag(f"({either.sql})", either.args)])


def fetch_page(
    conn: sqlite3.Connection, query: SearchQuery, registry: SearchRegistry, where: Frag
) -> Page:
    """One page of matches of ``where``, in query order, with neighbour cursors."""
    columns = sort_columns(query, registry)
    cursor = decode_cursor(query.cursor, query, len(columns)) if query.cursor else None
    if query.count <= 0:
        return Page([], None, None)
    forward = cursor is None or cursor.forward
    keys = ", ".join(f"{c.expr.sql} AS k{i}" for i, c in enumerate(columns))
    key_args = tuple(a for c in columns for a in c.expr.args)
    inner = f"SELECT {SELECT_COLUMNS}, {keys} FROM resources r WHERE {where.sql}"
    after = beyond(columns, cursor) if cursor else Frag("1")
    sql = f"SELECT * FROM ({inner}) WHERE {after.sql} ORDER BY {order_by(columns, forward)} LIMIT ?"
    args = (*key_args, *where.args, *after.args, query.count + 1)
    rows = cast(list[Row], conn.execute(sql, args).fetchall())
    more = len(rows) > query.count
    rows = rows[: query.count]
    if not forward:
        rows.reverse()
    return make_page(query, rows, cursor, more)


def make_page(query: SearchQuery, rows: list[Row], cursor: Cursor | None, more: bool) -> Page:
    def boundary(row: Row) -> tuple[Any, ...]:
        return (*row[KEY_OFFSET:], row[0])

    forward = cursor is None or cursor.forward
    next_cursor = previous = None
    if rows:
        if more or not forward:
            next_cursor = encode_cursor(True, query, boundary(rows[-1]))
        if cursor is not None and (forward or more):
            previous = encode_cursor(False, query, boundary(rows[0]))
    elif cursor is not None:
        # An empty page still leads back (or on) from where it was asked.
        flipped = encode_cursor(not cursor.forward, query, cursor.values)
        previous, next_cursor = (flipped, None) if forward else (None, flipped)
    return Page(rows, next_cursor, previous)
