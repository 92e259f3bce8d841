"""Pages of unselective searches: walk an index in sort order, check each row.

The general plan (``search_paging.fetch_page``) starts from the index lookups
of the query and sorts what they find: right when some predicate is selective
(a patient, an identifier), slow when none is (the reading worklist,
``status=available`` over every study): then it materialises most of the type
to keep 50 rows. Here the page instead walks the index of the first sort key
(``_lastUpdated``, or a date parameter's range bounds) and checks each row
with correlated lookups (``search_check``), stopping at the page size: the cost
follows the density of matches, not the size of the store.

Chosen per query by probing: each top-level value predicate counts its
lookup up to ``PROBE_LIMIT`` rows; if one stays below it, the general plan
runs. Only forward pages from the start or from a cursor on a keyed row take
this path; when the walk runs out of keyed rows (resources without a value for
the sort key follow, in pk order), the general plan answers that page.
See https://hl7.org/fhir/R4/search.html#sort
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import cast

from fhir_server.search.ast import And, Compare, Node, SearchQuery, SortKey
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.sqlite.search_check import check
from fhir_server.storage.sqlite.search_compile import COLUMN_PARAMS, Ctx, Frag, join, pk_set
from fhir_server.storage.sqlite.search_paging import (
    SELECT_COLUMNS,
    Page,
    Row,
    SortColumn,
    beyond,
    decode_cursor,
    make_page,
    sort_columns,
)

PROBE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class _Source:
    """Where the walk reads rows from, in the order of the first sort key."""

    tables: str
    where: Frag
    key: str
    order: str


def walk_page(
    conn: sqlite3.Connection,
    query: SearchQuery,
    registry: SearchRegistry,
    probe_limit: int = PROBE_LIMIT,
) -> Page | None:
    """The page by walking the sort index, or None when the general plan should run."""
    source = _plan(conn, query, registry, probe_limit)
    if source is None or query.count <= 0:
        return None
    columns = sort_columns(query, registry)
    cursor = decode_cursor(query.cursor, query, len(columns)) if query.cursor else None
    if cursor is not None and (not cursor.forward or cursor.values[0] is None):
        return None
    ctx = Ctx("r", query.types, registry)
    assert query.where is not None
    matches = check(query.where, ctx)
    keys = [Frag(f"{source.key} AS k0"), *(_key(c, i) for i, c in enumerate(columns) if i)]
    key_sql = join(", ", keys)
    inner = (
        f"SELECT {SELECT_COLUMNS}, {key_sql.sql} FROM {source.tables}"
        f" WHERE {source.where.sql} AND r.deleted = 0 AND {matches.sql}"
    )
    after = beyond(columns, cursor) if cursor else Frag("1")
    sql = f"SELECT * FROM ({inner}) WHERE {after.sql} ORDER BY {_order(source, columns)} LIMIT ?"
    args = (*key_sql.args, *source.where.args, *matches.args, *after.args, query.count + 1)
    rows = cast(list[Row], conn.execute(sql, args).fetchall())
    if len(rows) <= query.count and columns[0].nullable:
        return None  # keyless resources may follow: the general plan knows where
    return make_page(query, rows[: query.count], cursor, len(rows) > query.count)


def driven_where(
    conn: sqlite3.Connection,
    query: SearchQuery,
    registry: SearchRegistry,
    probe_limit: int = PROBE_LIMIT,
) -> Frag | None:
    """With a selective lookup among the top-level predicates: the condition that
    drives the search by it alone and checks the others row by row (rather than
    materialising every other lookup, ``status=final`` over all reports). None
    when there is no such lookup or nothing else to check."""
    if len(query.types) != 1 or not isinstance(query.where, And):
        return None
    ctx = Ctx("r", query.types, registry)
    parts = query.where.parts
    driver = next((p for p in parts if _lookup(p) and _selective(conn, p, ctx, probe_limit)), None)
    if driver is None:
        return None
    found = pk_set(driver, ctx)
    rest = [check(p, ctx) for p in parts if p is not driver]
    head = Frag(
        f"+r.type = ? AND r.deleted = 0 AND r.pk IN ({found.sql})", (query.types[0], *found.args)
    )
    return join(" AND ", [head, *rest])


def _key(column: SortColumn, i: int) -> Frag:
    return Frag(f"{column.expr.sql} AS k{i}", column.expr.args)


def _order(source: _Source, columns: list[SortColumn]) -> str:
    terms = [f"k0 {source.order}"]
    for i, col in enumerate(columns[1:], start=1):
        if col.nullable:
            terms.append(f"(k{i} IS NULL) ASC")
        terms.append(f"k{i} {'DESC' if col.descending else 'ASC'}")
    return ", ".join([*terms, "pk ASC"])


def _plan(
    conn: sqlite3.Connection, query: SearchQuery, registry: SearchRegistry, probe_limit: int
) -> _Source | None:
    if len(query.types) != 1 or query.where is None:
        return None
    key = (query.sort or (SortKey("_lastUpdated"),))[0]
    parts = query.where.parts if isinstance(query.where, And) else (query.where,)
    probed = [p for p in parts if _lookup(p)]
    if not probed or any(isinstance(p, Compare) and p.param == key.param for p in parts):
        return None
    source = _source(key, query.types[0], registry)
    if source is None:
        return None
    ctx = Ctx("r", query.types, registry)
    for part in probed:
        if _selective(conn, part, ctx, probe_limit):
            return None
    return source


def _lookup(node: Node) -> bool:
    return isinstance(node, Compare) and node.param not in COLUMN_PARAMS and node.modifier != "not"


def _selective(conn: sqlite3.Connection, node: Node, ctx: Ctx, limit: int) -> bool:
    found = pk_set(node, ctx)
    sql = f"SELECT count(*) FROM ({found.sql} LIMIT {int(limit)})"
    return int(conn.execute(sql, found.args).fetchone()[0]) < limit


def _source(key: SortKey, resource_type: str, registry: SearchRegistry) -> _Source | None:
    direction = "DESC" if key.descending else "ASC"
    if key.param == "_lastUpdated":
        where = Frag("r.type = ?", (resource_type,))
        return _Source(
            "resources r INDEXED BY resources_type_updated", where, "r.last_updated", direction
        )
    param = registry.param(resource_type, key.param)
    if param is None or param.type != "date":
        return None
    # The first value of a resource in the walk is its sort key (max high
    # descending, min low ascending); its other values are skipped.
    bound, agg = ("high", "MAX") if key.descending else ("low", "MIN")
    tables = "search_date s CROSS JOIN resources r ON r.pk = s.pk"
    where = Frag(
        f"s.type = ? AND s.param = ? AND s.{bound} ="
        f" (SELECT {agg}({bound}) FROM search_date m WHERE m.pk = s.pk AND m.param = ?)"
        f" AND s.rowid = (SELECT min(rowid) FROM search_date m2 WHERE m2.pk = s.pk"
        f" AND m2.param = ? AND m2.{bound} = s.{bound})",
        (resource_type, key.param, key.param, key.param),
    )
    return _Source(tables, where, f"s.{bound}", direction)
