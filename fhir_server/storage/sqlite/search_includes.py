"""``_include`` and ``_revinclude`` for SQLite search, with ``:iterate``.

Non-iterating includes apply to the page's matches; iterating ones apply again
to what was included, until nothing new turns up (bounded, since the
specification lets servers limit iteration).
See https://hl7.org/fhir/R4/search.html#include
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from fhir_server.search.ast import Include, SearchQuery
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import StoredVersion
from fhir_server.storage.sqlite.search_compile import Ctx, Frag, condition, join
from fhir_server.storage.sqlite.search_paging import SELECT_COLUMNS, row_version

Row = tuple[Any, ...]
MAX_ROUNDS = 4
_CHUNK = 500


def resolve_includes(
    conn: sqlite3.Connection, query: SearchQuery, registry: SearchRegistry, rows: Sequence[Row]
) -> list[StoredVersion]:
    """The resources the page's ``_include``/``_revinclude`` bring in, matches excluded."""
    if not query.includes or not rows:
        return []
    seen = {int(row[0]) for row in rows}
    guard = _guard(query, registry)
    found = _round(conn, query.includes, rows, seen, guard)
    iterating = tuple(i for i in query.includes if i.iterate)
    frontier, rounds = found, 0
    while frontier and iterating and rounds < MAX_ROUNDS:
        frontier = _round(conn, iterating, frontier, seen, guard)
        found += frontier
        rounds += 1
    return [row_version(row) for row in found]


def _guard(query: SearchQuery, registry: SearchRegistry) -> Frag:
    if query.include_where is None:
        return Frag("1")
    return condition(query.include_where, Ctx("t", registry.types, registry))


def _round(
    conn: sqlite3.Connection,
    includes: Sequence[Include],
    sources: Sequence[Row],
    seen: set[int],
    guard: Frag,
) -> list[Row]:
    new: list[Row] = []
    for include in includes:
        for row in _include_rows(conn, include, sources, guard):
            if int(row[0]) not in seen:
                seen.add(int(row[0]))
                new.append(row)
    return new


def _include_rows(
    conn: sqlite3.Connection, include: Include, sources: Sequence[Row], guard: Frag
) -> list[Row]:
    if include.reverse:
        return _reverse_rows(conn, include, sources, guard)
    pks = [int(r[0]) for r in sources if r[1] == include.source_type]
    found: list[Row] = []
    for start in range(0, len(pks), _CHUNK):
        chunk = pks[start : start + _CHUNK]
        filters = [
            Frag(f"ref.pk IN ({', '.join('?' * len(chunk))})", tuple(chunk)),
            # ``+``: look the page's rows up by pk, not every reference of the type.
            Frag("+ref.type = ?", (include.source_type,)),
            *_param_filter(include),
            guard,
        ]
        if include.target_type is not None:
            filters.append(Frag("ref.ref_type = ?", (include.target_type,)))
        found += _query(conn, "t.type = ref.ref_type AND t.id = ref.ref_id", filters)
    return found


def _reverse_rows(
    conn: sqlite3.Connection, include: Include, sources: Sequence[Row], guard: Frag
) -> list[Row]:
    by_type: dict[str, list[str]] = {}
    for row in sources:
        if include.target_type in (None, row[1]):
            by_type.setdefault(str(row[1]), []).append(str(row[2]))
    found: list[Row] = []
    for target_type, ids in by_type.items():
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            filters = [
                Frag("ref.type = ?", (include.source_type,)),
                *_param_filter(include),
                Frag("ref.ref_type = ?", (target_type,)),
                Frag(f"ref.ref_id IN ({', '.join('?' * len(chunk))})", tuple(chunk)),
                guard,
            ]
            found += _query(conn, "t.pk = ref.pk", filters)
    return found


def _param_filter(include: Include) -> list[Frag]:
    if include.param == "*":
        # Every reference parameter, not the components of composites.
        return [Frag("instr(ref.param, '$') = 0")]
    return [Frag("ref.param = ?", (include.param,))]


def _query(conn: sqlite3.Connection, on: str, filters: list[Frag]) -> list[Row]:
    where = join(" AND ", [Frag("t.deleted = 0"), *filters])
    columns = SELECT_COLUMNS.replace("r.", "t.")
    sql = (
        f"SELECT DISTINCT {columns} FROM search_reference ref JOIN resources t ON {on}"
        f" WHERE {where.sql} ORDER BY t.pk"
    )
    return cast(list[Row], conn.execute(sql, where.args).fetchall())
