"""Access filters that reach beyond one resource, evaluated against the store.

Most filters the policy builds (a compartment, a granular scope) test a
resource's own index entries. A referrer's (``fhir_server.access.referrer``)
also follows a chain to the Patient and a ``_has`` from the ServiceRequests:
for one resource, those parts are answered by a search on the store, the
same compiled query a search would run, so a read and a search always agree.
The resource's own entries are those of the version being checked (a vread
of an old version is judged by that version's content), its neighbours are
current ones, as in a search.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from fhir_server.search.ast import And, Chain, Compare, Has, Node, Not, Or, SearchQuery
from fhir_server.search.values import IndexEntry, ReferenceValue, TokenValue
from fhir_server.storage.base import SearchPage

Lookup = Callable[[str, Node], Awaitable[bool]]
"""Whether some current resource of a type matches a filter."""

Matcher = Callable[[Node, str, Sequence[IndexEntry]], bool]
"""Evaluates a filter over one resource's id and index entries."""

# Page size when listing every match (a referrer's patients for DICOMweb).
_PAGE = 1000


class Searcher(Protocol):
    """The store, or a transaction: anything that runs a search."""

    async def search(self, query: SearchQuery) -> SearchPage: ...


def lookup_in(searcher: Searcher) -> Lookup:
    """A ``Lookup`` answered by one-row searches on ``searcher``."""

    async def exists(resource_type: str, where: Node) -> bool:
        page = await searcher.search(SearchQuery(types=(resource_type,), where=where, count=1))
        return bool(page.matches)

    return exists


async def ids_matching(searcher: Searcher, resource_type: str, where: Node) -> tuple[str, ...]:
    """The ids of every current ``resource_type`` resource matching ``where`` (all pages)."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        query = SearchQuery(types=(resource_type,), where=where, count=_PAGE, cursor=cursor)
        page = await searcher.search(query)
        found.extend(v.id for v in page.matches)
        cursor = page.next_cursor
        if cursor is None or not page.matches:
            return tuple(found)


def needs_store(node: Node) -> bool:
    """Whether ``node`` looks beyond the resource itself (a chain or ``_has``)."""
    if isinstance(node, And | Or):
        return any(needs_store(p) for p in node.parts)
    if isinstance(node, Not):
        return needs_store(node.part)
    return isinstance(node, Chain | Has)


async def matches_stored(
    node: Node,
    resource_type: str,
    resource_id: str,
    entries: Sequence[IndexEntry],
    lookup: Lookup,
    match: Matcher,
) -> bool:
    """Evaluate ``node`` on one resource: its own entries through ``match``, chains
    and ``_has`` through ``lookup``."""

    async def ev(n: Node) -> bool:
        # short-circuits, the resource's own tests first: each lookup is a query
        if isinstance(n, And):
            for part in sorted(n.parts, key=needs_store):
                if not await ev(part):
                    return False
            return True
        if isinstance(n, Or):
            for part in sorted(n.parts, key=needs_store):
                if await ev(part):
                    return True
            return False
        if isinstance(n, Not):
            return not await ev(n.part)
        if isinstance(n, Chain):
            return await _chain(n, entries, lookup)
        if isinstance(n, Has):
            ref = Compare(n.param, "reference", ReferenceValue(resource_type, resource_id))
            return await lookup(n.source_type, And((ref, n.where)))
        return match(n, resource_id, entries)

    return await ev(node)


async def _chain(node: Chain, entries: Sequence[IndexEntry], lookup: Lookup) -> bool:
    targets = sorted(
        {
            e.value.id
            for e in entries
            if e.param == node.param
            and isinstance(e.value, ReferenceValue)
            and e.value.type == node.target_type
            and e.value.id
        }
    )
    if not targets:
        return False
    ids = tuple(Compare("_id", "token", TokenValue(None, t)) for t in targets)
    return await lookup(node.target_type, And((Or(ids), node.where)))
