"""Running a search on MongoDB: filter, one keyset page, total, includes.

The expression tree compiles to one filter on ``resources`` (see
``search_compile``); the page is one ``find`` with a sort and a limit, past the
cursor's boundary (see ``search_paging``); the total is a ``count_documents``
on the same filter; includes are fetched afterwards (see ``search_includes``).
See https://hl7.org/fhir/R4/search.html and https://hl7.org/fhir/R4/http.html#paging
"""

from __future__ import annotations

from fhir_server.search.ast import SearchQuery
from fhir_server.search.cursor import Cursor, decode_cursor, encode_cursor
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import SearchPage
from fhir_server.storage.mongo.documents import RESOURCES, Doc, stored
from fhir_server.storage.mongo.journal import Database
from fhir_server.storage.mongo.search_compile import Compiler
from fhir_server.storage.mongo.search_includes import resolve_includes
from fhir_server.storage.mongo.search_paging import (
    SortField,
    beyond,
    boundary,
    sort_fields,
    sort_spec,
)

# ``_total=estimate`` stops counting here: cheap at any size, exact for small results.
ESTIMATE_CAP = 10_000
# Of the index, includes need the references and cursors the sort keys.
_PAGE_FIELDS: Doc = {
    f"idx.{kind}": 0
    for kind in ("string", "token", "date", "number", "quantity", "uri", "composite")
}


async def run_search(db: Database, registry: SearchRegistry, query: SearchQuery) -> SearchPage:
    """Matches of one page in query order, their includes, the total and cursors."""
    compiler = Compiler(db, registry)
    where = await compiler.matching(query.types or registry.types, query.where)
    fields = sort_fields(query, registry)
    cursor = decode_cursor(query.cursor, query, len(fields)) if query.cursor else None
    docs: list[Doc] = []
    more = False
    if query.count > 0:
        forward = cursor is None or cursor.forward
        page_where = {"$and": [where, beyond(fields, cursor)]} if cursor else where
        found = (
            db[RESOURCES]
            .find(page_where, _PAGE_FIELDS)
            .sort(sort_spec(fields, forward))
            .limit(query.count + 1)
        )
        docs = await found.to_list(None)
        more = len(docs) > query.count
        docs = docs[: query.count]
        if not forward:
            docs.reverse()
    total = None
    if query.total == "accurate":
        total = await db[RESOURCES].count_documents(where)
    elif query.total == "estimate":  # as the SQLite adapter: exact up to the cap
        total = await db[RESOURCES].count_documents(where, limit=ESTIMATE_CAP)
    includes = await resolve_includes(compiler, query, docs)
    previous, following = _neighbours(query, docs, cursor, more, fields)
    return SearchPage(
        matches=[stored(d) for d in docs],
        includes=[stored(d) for d in includes],
        total=total,
        next_cursor=following,
        previous_cursor=previous,
    )


def _neighbours(
    query: SearchQuery, docs: list[Doc], cursor: Cursor | None, more: bool, fields: list[SortField]
) -> tuple[str | None, str | None]:
    """(previous, next) page cursors, as the SQLite adapter gives them."""
    forward = cursor is None or cursor.forward
    if docs:
        following = previous = None
        if more or not forward:
            following = encode_cursor(True, query, boundary(docs[-1], fields))
        if cursor is not None and (forward or more):
            previous = encode_cursor(False, query, boundary(docs[0], fields))
        return previous, following
    if cursor is None:
        return None, None
    # An empty page still leads back (or on) from where it was asked.
    flipped = encode_cursor(not cursor.forward, query, cursor.values)
    return (flipped, None) if forward else (None, flipped)
