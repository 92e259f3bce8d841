"""The SQLite side of search: index tables, index writes, and running a search.

One index table per value kind, keyed by ``resources.pk``. Every table has a
lookup index ``(type, param, value..., pk)`` that answers a search predicate
without touching the table, and a ``(pk, param)`` index for re-indexing,
sort keys and ``_include``. ``grp`` ties the components of one composite value
together (0 for plain values; ``MULTI_GRP`` for each of several values of one
date parameter, which puts them in their own width class: ``span_class``).

Paging is keyset-based: a cursor holds the sort key of the row at the page
boundary, so pages stay correct while resources are added or removed.
See https://hl7.org/fhir/R4/search.html and https://hl7.org/fhir/R4/http.html#paging
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from fhir_server.search.ast import SearchQuery
from fhir_server.search.packed import (
    COMPOSITE,
    DATE,
    NUMBER,
    QUANTITY,
    REFERENCE,
    STRING,
    TOKEN,
    URI,
    PackedEntry,
    pack_entries,
)
from fhir_server.search.registry import COLUMN_PARAMS, SearchRegistry
from fhir_server.search.values import IndexEntry
from fhir_server.storage.base import SearchPage
from fhir_server.storage.sqlite.bulk import insert_rows
from fhir_server.storage.sqlite.search_compile import (
    MULTI_GRP,
    Ctx,
    Frag,
    condition,
    drives,
    join,
    span_class,
    type_in,
)
from fhir_server.storage.sqlite.search_includes import resolve_includes
from fhir_server.storage.sqlite.search_paging import fetch_page, row_version
from fhir_server.storage.sqlite.search_walk import (
    PROBE_LIMIT,
    banded_where,
    driven_where,
    walk_page,
)

_COLUMNS = "pk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER NOT NULL"

INDEX_DDL: tuple[str, ...] = (
    f"CREATE TABLE IF NOT EXISTS search_string({_COLUMNS}, norm TEXT NOT NULL, exact TEXT)",
    "CREATE INDEX IF NOT EXISTS search_string_lookup ON search_string(type, param, norm, pk)",
    "CREATE INDEX IF NOT EXISTS search_string_pk ON search_string(pk, param)",
    f"CREATE TABLE IF NOT EXISTS search_token({_COLUMNS}, system TEXT, code TEXT, text TEXT)",
    "CREATE INDEX IF NOT EXISTS search_token_lookup ON search_token(type, param, code, system, pk)",
    "CREATE INDEX IF NOT EXISTS search_token_pk ON search_token(pk, param)",
    f"CREATE TABLE IF NOT EXISTS search_date({_COLUMNS},"
    " low INTEGER NOT NULL, high INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS search_date_low ON search_date(type, param, low, high, pk)",
    "CREATE INDEX IF NOT EXISTS search_date_high ON search_date(type, param, high, pk)",
    "CREATE INDEX IF NOT EXISTS search_date_pk ON search_date(pk, param)",
    # Date ranges by width class, then start: a band [t1, t2) is two-sided on
    # ``low``. ``grp`` last makes it covering (the class expression reads it).
    f"CREATE INDEX IF NOT EXISTS search_date_band"
    f" ON search_date(type, param, ({span_class()}), low, high, pk, grp)",
    # Stores indexed before width classes: mark the values of multi-valued date
    # parameters once (``search_schema`` records the steps done).
    "CREATE TABLE IF NOT EXISTS search_schema(step TEXT PRIMARY KEY)",
    f"UPDATE search_date SET grp = {MULTI_GRP} WHERE grp = 0"
    " AND NOT EXISTS (SELECT 1 FROM search_schema WHERE step = 'date-multi')"
    " AND EXISTS (SELECT 1 FROM search_date d WHERE d.pk = search_date.pk"
    " AND d.param = search_date.param AND d.rowid <> search_date.rowid)",
    "INSERT OR IGNORE INTO search_schema VALUES ('date-multi')",
    f"CREATE TABLE IF NOT EXISTS search_number({_COLUMNS}, value REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS search_number_lookup ON search_number(type, param, value, pk)",
    "CREATE INDEX IF NOT EXISTS search_number_pk ON search_number(pk, param)",
    f"CREATE TABLE IF NOT EXISTS search_quantity({_COLUMNS}, value REAL NOT NULL,"
    " system TEXT, code TEXT, unit TEXT)",
    "CREATE INDEX IF NOT EXISTS search_quantity_lookup ON search_quantity(type, param, value, pk)",
    "CREATE INDEX IF NOT EXISTS search_quantity_pk ON search_quantity(pk, param)",
    f"CREATE TABLE IF NOT EXISTS search_reference({_COLUMNS}, ref_type TEXT, ref_id TEXT,"
    " url TEXT, version TEXT)",
    "CREATE INDEX IF NOT EXISTS search_reference_lookup"
    " ON search_reference(type, param, ref_id, ref_type, pk)",
    "CREATE INDEX IF NOT EXISTS search_reference_target"
    " ON search_reference(ref_type, ref_id, param, type)",
    "CREATE INDEX IF NOT EXISTS search_reference_url ON search_reference(type, param, url, pk)"
    " WHERE url IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS search_reference_pk ON search_reference(pk, param)",
    f"CREATE TABLE IF NOT EXISTS search_uri({_COLUMNS}, uri TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS search_uri_lookup ON search_uri(type, param, uri, pk)",
    "CREATE INDEX IF NOT EXISTS search_uri_pk ON search_uri(pk, param)",
    # Default order and _lastUpdated within one type.
    "CREATE INDEX IF NOT EXISTS resources_type_updated ON resources(type, last_updated)",
)

INDEX_TABLES: tuple[str, ...] = (
    "search_string",
    "search_token",
    "search_date",
    "search_number",
    "search_quantity",
    "search_reference",
    "search_uri",
)

Row = tuple[object, ...]
# ``_total=estimate`` stops counting here: cheap at any size, exact for small results.
ESTIMATE_CAP = 10_000


def write_index(
    conn: sqlite3.Connection,
    pk: int,
    resource_type: str,
    entries: Sequence[IndexEntry],
    *,
    replace: bool = True,
) -> None:
    """Replace the index rows of resource ``pk`` with ``entries`` (``replace=False``
    for a resource just inserted, which has none: saves a DELETE per table)."""
    if replace:
        delete_index(conn, pk)
    insert_index_rows(conn, index_rows(pk, resource_type, entries))


def index_rows(
    pk: int,
    resource_type: str,
    entries: Sequence[IndexEntry],
    into: dict[str, list[Row]] | None = None,
) -> dict[str, list[Row]]:
    """The rows, per index table, that hold ``entries`` of resource ``pk`` (added
    to ``into`` when given: a batch's rows are merged table by table)."""
    rows: dict[str, list[Row]] = {} if into is None else into
    # every write path hands its index over packed (extraction, the audit trail);
    # entry objects (tests, a hand-made index) are packed first
    packed = pack_entries(entries)
    multi = _multi_dates(packed)
    group = 0
    for entry in packed:
        param, kind = entry[0], entry[1]
        if param in COLUMN_PARAMS:
            continue
        if kind == COMPOSITE:
            group += 1
            for i, part in enumerate(entry[2]):
                found = _COLUMNS_OF.get(part[0])  # None: a nested composite (not in R4)
                if found is not None:
                    row = (pk, resource_type, f"{param}${i}", group, *found[1](part[1:]))
                    _table(rows, found[0]).append(row)
            continue
        table, columns = _COLUMNS_OF[kind]
        grp = MULTI_GRP if multi and param in multi else 0
        table_rows = rows.get(table)  # not _table(): a call per row costs ~20 %
        if table_rows is None:
            table_rows = rows[table] = []
        table_rows.append((pk, resource_type, param, grp) + columns(entry[2:]))
    return rows


def _multi_dates(packed: Sequence[PackedEntry]) -> set[str]:
    """The date parameters with several values in ``packed`` (see ``span_class``)."""
    seen: set[str] = set()
    multi: set[str] = set()
    for entry in packed:
        if entry[1] == DATE:
            (multi if entry[0] in seen else seen).add(entry[0])
    return multi


def _table(rows: dict[str, list[Row]], table: str) -> list[Row]:
    table_rows = rows.get(table)
    if table_rows is None:
        table_rows = rows[table] = []
    return table_rows


def insert_index_rows(conn: sqlite3.Connection, rows: dict[str, list[Row]]) -> None:
    """Insert rows made by ``index_rows`` (of one resource or merged across many)."""
    for table, table_rows in rows.items():
        insert_rows(conn, f"INSERT INTO {table}", table_rows)


def _all(fields: Row) -> Row:
    return fields


# The table each kind of value is stored in, and its value columns taken from
# the value's packed fields.
_COLUMNS_OF: dict[int, tuple[str, Callable[[Row], Row]]] = {
    STRING: ("search_string", _all),  # normalized, exact
    TOKEN: ("search_token", _all),  # system, code, text
    DATE: ("search_date", _all),  # low, high
    NUMBER: ("search_number", lambda f: f[:1]),  # value (not low, high)
    QUANTITY: ("search_quantity", lambda f: (f[0], *f[3:])),  # value, system, code, unit
    REFERENCE: ("search_reference", _all),  # type, id, url, version
    URI: ("search_uri", _all),  # uri
}


def delete_index(conn: sqlite3.Connection, pk: int) -> None:
    """Remove every index row of resource ``pk``."""
    for table in INDEX_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE pk = ?", (pk,))


def match_condition(query: SearchQuery, registry: SearchRegistry, alias: str = "r") -> Frag:
    """The SQL condition on ``resources {alias}`` selecting the query's matches."""
    types = query.types or registry.types
    # With an index lookup to drive the search, ``+`` keeps SQLite from walking
    # every row of the type instead (it has no statistics to know better).
    column = (
        f"+{alias}.type" if query.where is not None and drives(query.where) else f"{alias}.type"
    )
    parts = [type_in(column, types), Frag(f"{alias}.deleted = 0")]
    if query.where is not None:
        parts.append(condition(query.where, Ctx(alias, types, registry)))
    return join(" AND ", parts)


def count_matches(conn: sqlite3.Connection, query: SearchQuery, where: Frag) -> int | None:
    """The total ``query.total`` asks for: none, accurate, or an estimate that
    counts at most ``ESTIMATE_CAP`` matches (exact below it, the cap above it)."""
    if query.total == "none":
        return None
    sql = f"SELECT r.pk FROM resources r WHERE {where.sql}"
    if query.total == "estimate":
        sql += f" LIMIT {ESTIMATE_CAP}"
    row = conn.execute(f"SELECT count(*) FROM ({sql})", where.args).fetchone()
    return int(row[0])


def run_search(
    conn: sqlite3.Connection,
    query: SearchQuery,
    registry: SearchRegistry,
    *,
    probe_limit: int = PROBE_LIMIT,
    band_limit: int | None = None,
) -> SearchPage:
    """Matches of one page in query order, their includes, the total and cursors.

    Unselective searches walk the sort index (``search_walk``); ``probe_limit``
    is the lookup size below which a predicate counts as selective, ``band_limit``
    the size below which a date band drives (``driven_where``)."""
    driven = driven_where(conn, query, registry, probe_limit, band_limit)
    page = walk_page(conn, query, registry, probe_limit) if driven is None else None
    where = driven or banded_where(query, registry) or match_condition(query, registry)
    page = page or fetch_page(conn, query, registry, where)
    total = count_matches(conn, query, where)
    includes = resolve_includes(conn, query, registry, page.rows)
    return SearchPage(
        matches=[row_version(row) for row in page.rows],
        includes=includes,
        total=total,
        next_cursor=page.next_cursor,
        previous_cursor=page.previous_cursor,
    )
