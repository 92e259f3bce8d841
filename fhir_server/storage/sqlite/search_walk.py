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

A date range (``started=ge…&started=lt…``, ``ap``) is a band no one-sided
lookup serves: ``band_set`` reads it from ``search_date_band`` per width class,
bounded on both sides. It drives when it is small, and always when the walk is
not taken (it is never larger than either side of the range alone).
See https://hl7.org/fhir/R4/search.html#sort
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import cast

from fhir_server.search.ast import And, Compare, Node, SearchQuery, SortKey
from fhir_server.search.cursor import decode_cursor
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.sqlite.search_check import check
from fhir_server.storage.sqlite.search_compile import (
    COLUMN_PARAMS,
    SPAN_MULTI,
    SPAN_WIDE,
    SPAN_WIDTHS,
    Band,
    Ctx,
    Frag,
    band_of,
    join,
    pk_set,
    span_class,
    value_test,
)
from fhir_server.storage.sqlite.search_paging import (
    SELECT_COLUMNS,
    Page,
    Row,
    SortColumn,
    beyond,
    make_page,
    sort_columns,
)

PROBE_LIMIT = 500
# A date band drives below this many times the probe limit (2 000 rows, ~10 ms
# to fetch and sort); above it, walking the sort index finds a page sooner
# (the band is dense), unless the band is on the sort key (then it drives anyway).
BAND_FACTOR = 4


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
    band_limit: int | None = None,
) -> Frag | None:
    """With a selective lookup among the top-level predicates: the condition that
    drives the search by it alone and checks the others row by row (rather than
    materialising every other lookup, ``status=final`` over all reports). None
    when there is no such lookup or nothing else to check.

    Failing that, a date band the predicates imply (``started=ge…&started=lt…``)
    drives the search when it holds fewer than ``band_limit`` rows (default
    ``BAND_FACTOR * probe_limit``; unbounded with ``banded_where``)."""
    if len(query.types) != 1 or query.where is None:
        return None
    ctx = Ctx("r", query.types, registry)
    parts = _parts(query.where)
    band = band_of(parts)
    if isinstance(query.where, And):
        # The sides of a band hold the band: no need to probe them alone.
        driver = next(
            (
                p
                for p in parts
                if _lookup(p)
                and not (band and _on(p, band.param))
                and _selective(conn, p, ctx, probe_limit)
            ),
            None,
        )
        if driver is not None:
            rest = [check(p, ctx) for p in parts if p is not driver]
            return _driven(query.types[0], pk_set(driver, ctx), rest)
    limit = BAND_FACTOR * probe_limit if band_limit is None else band_limit
    if band is None or not _under(conn, band_set(band, ctx), limit):
        return None
    return banded_where(query, registry)


def banded_where(query: SearchQuery, registry: SearchRegistry) -> Frag | None:
    """The search driven by its date band, however wide (still fewer rows than
    either side of the band alone), the other predicates checked row by row; or
    None without a band."""
    if len(query.types) != 1 or query.where is None:
        return None
    parts = _parts(query.where)
    band = band_of(parts)
    if band is None:
        return None
    ctx = Ctx("r", query.types, registry)
    rest = [check(p, ctx) for p in parts if p not in band.parts]
    return _driven(query.types[0], band_set(band, ctx), rest)


def band_set(band: Band, ctx: Ctx) -> Frag:
    """A ``SELECT pk`` (with repeats) of the resources matching ``band.parts``:
    one range of ``search_date_band`` per width class, both ends bounded but for
    the rare wide and multi-valued classes. A row of a single-valued class is
    the resource's only value, so the predicates are tested on it in place; the
    resources with several values are checked value by value."""
    head = "SELECT pk FROM search_date WHERE type = ? AND param = ? AND"
    key = (ctx.types[0], band.param)
    span = span_class()
    tests = join(" AND ", [value_test(p, "") for p in band.parts])
    branches = [
        Frag(
            f"{head} {span} = {c} AND low > ? AND low < ? AND {tests.sql}",
            (*key, band.after - width, band.before, *tests.args),
        )
        for c, width in enumerate(SPAN_WIDTHS)
    ]
    branches.append(
        Frag(
            f"{head} {span} = {SPAN_WIDE} AND low < ? AND {tests.sql}",
            (*key, band.before, *tests.args),
        )
    )
    several = check(And(band.parts), Ctx("m", ctx.types, ctx.registry, ctx.depth + 1))
    branches.append(
        Frag(
            f"SELECT m.pk FROM search_date m WHERE m.type = ? AND m.param = ?"
            f" AND {span_class('m.')} = {SPAN_MULTI} AND {several.sql}",
            (*key, *several.args),
        )
    )
    return join(" UNION ALL ", branches)


def _parts(where: Node) -> tuple[Node, ...]:
    return where.parts if isinstance(where, And) else (where,)


def _driven(resource_type: str, found: Frag, rest: list[Frag]) -> Frag:
    head = Frag(
        f"+r.type = ? AND r.deleted = 0 AND r.pk IN ({found.sql})", (resource_type, *found.args)
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


def _on(node: Node, param: str) -> bool:
    return isinstance(node, Compare) and node.param == param


def _lookup(node: Node) -> bool:
    return isinstance(node, Compare) and node.param not in COLUMN_PARAMS and node.modifier != "not"


def _selective(conn: sqlite3.Connection, node: Node, ctx: Ctx, limit: int) -> bool:
    return _under(conn, pk_set(node, ctx), limit)


def _under(conn: sqlite3.Connection, found: Frag, limit: int) -> bool:
    """Whether the lookup ``found`` yields fewer than ``limit`` rows (counting stops there)."""
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
