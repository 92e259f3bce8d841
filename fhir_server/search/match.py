"""The pure reference evaluator of search trees over index entries: the test oracle.

Never the production path. It is written straight from the semantics in
``fhir_server.search`` (prefixes, modifiers, sort order) without sharing code
with any backend, so backends are tested against it.
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.search.ast import (
    And,
    Chain,
    Compare,
    Composite,
    Has,
    Include,
    Missing,
    Node,
    Not,
    Or,
    SearchQuery,
    SortKey,
)
from fhir_server.search.match_values import value_matches
from fhir_server.search.values import (
    DateRange,
    IndexEntry,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    derived_param,
)

MAX_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Indexed:
    """A current resource with its index entries; ``pk`` orders ties."""

    pk: int
    type: str
    id: str
    last_updated: int
    entries: tuple[IndexEntry, ...]


Corpus = Mapping[tuple[str, str], Indexed]


def matches(node: Node | None, doc: Indexed, corpus: Corpus) -> bool:
    """Whether ``doc`` matches ``node`` (``corpus`` resolves chains and ``_has``)."""
    if node is None:
        return True
    if isinstance(node, And):
        return all(matches(p, doc, corpus) for p in node.parts)
    if isinstance(node, Or):
        return any(matches(p, doc, corpus) for p in node.parts)
    if isinstance(node, Not):
        return not matches(node.part, doc, corpus)
    if isinstance(node, Missing):
        return _missing(node, doc)
    if isinstance(node, Compare):
        return _compare(node, doc)
    if isinstance(node, Composite):
        return any(_composite_group(node, e) for e in doc.entries if e.param == node.param)
    if isinstance(node, Chain):
        return any(matches(node.where, t, corpus) for t in _targets(doc, node, corpus))
    return _has(node, doc, corpus)


def _missing(node: Missing, doc: Indexed) -> bool:
    if node.param in ("_id", "_lastUpdated", "_type"):
        return not node.missing
    present = any(e.param == node.param for e in doc.entries)
    return present != node.missing


def _compare(node: Compare, doc: Indexed) -> bool:
    if node.modifier == "not":
        return not _compare(Compare(node.param, node.type, node.value, node.prefix), doc)
    if node.param in ("_id", "_type"):
        wanted = node.value.code if isinstance(node.value, TokenValue) else None
        return wanted is not None and wanted == (doc.id if node.param == "_id" else doc.type)
    if node.param == "_lastUpdated":
        point = DateRange(doc.last_updated, doc.last_updated + 1)
        return value_matches(node, point)
    name = node.param
    if node.modifier in ("identifier", "of-type"):
        name = derived_param(node.param, node.modifier)
    return any(value_matches(node, e.value) for e in doc.entries if e.param == name)


def _composite_group(node: Composite, entry: IndexEntry) -> bool:
    components = getattr(entry.value, "components", ())
    if len(components) != len(node.parts):
        return False
    return all(value_matches(p, c) for p, c in zip(node.parts, components, strict=True))


def _targets(doc: Indexed, node: Chain, corpus: Corpus) -> list[Indexed]:
    found: list[Indexed] = []
    for entry in doc.entries:
        ref = entry.value
        if entry.param == node.param and isinstance(ref, ReferenceValue):
            if ref.type == node.target_type and ref.id is not None:
                target = corpus.get((ref.type, ref.id))
                found += [target] if target is not None else []
    return found


def _has(node: Has, doc: Indexed, corpus: Corpus) -> bool:
    for source in corpus.values():
        if source.type == node.source_type and _points_at(source, node.param, doc):
            if matches(node.where, source, corpus):
                return True
    return False


def _points_at(source: Indexed, param: str, doc: Indexed) -> bool:
    return any(
        isinstance(e.value, ReferenceValue)
        and (param == "*" or e.param == param)
        and e.value.type == doc.type
        and e.value.id == doc.id
        for e in source.entries
    )


def search(query: SearchQuery, corpus: Corpus) -> list[Indexed]:
    """Every match of ``query`` (all pages) in query order."""
    found = [
        d
        for d in corpus.values()
        if (not query.types or d.type in query.types) and matches(query.where, d, corpus)
    ]
    keys = query.sort or (SortKey("_lastUpdated"),)

    def order(a: Indexed, b: Indexed) -> int:
        return _compare_docs(a, b, keys)

    return sorted(found, key=functools.cmp_to_key(order))


def sort_value(doc: Indexed, key: SortKey) -> Any:
    """The value ``doc`` sorts by for ``key``; None (sorted last) when it has none."""
    if key.param == "_id":
        return doc.id
    if key.param == "_lastUpdated":
        return doc.last_updated
    values = [v for e in doc.entries if e.param == key.param for v in _sortable(e, key)]
    if not values:
        return None
    return max(values) if key.descending else min(values)


def _sortable(entry: IndexEntry, key: SortKey) -> list[Any]:
    v = entry.value
    if isinstance(v, StringValue):
        return [v.normalized]
    if isinstance(v, TokenValue):
        return [v.code] if v.code is not None else []
    if isinstance(v, DateRange):
        return [v.high if key.descending else v.low]
    if isinstance(v, NumberValue | QuantityValue):
        return [v.value]
    if isinstance(v, ReferenceValue):
        return [f"{v.type}/{v.id}"] if v.type is not None and v.id is not None else []
    if isinstance(v, UriValue):
        return [v.uri]
    return []


def _compare_docs(a: Indexed, b: Indexed, keys: Iterable[SortKey]) -> int:
    for key in keys:
        va, vb = sort_value(a, key), sort_value(b, key)
        if va == vb:
            continue
        if va is None or vb is None:
            return 1 if va is None else -1
        order = -1 if va < vb else 1
        return -order if key.descending else order
    return (a.pk > b.pk) - (a.pk < b.pk)


def include(query: SearchQuery, page: list[Indexed], corpus: Corpus) -> list[Indexed]:
    """The resources ``_include``/``_revinclude`` add to ``page`` (page excluded)."""
    seen = {d.pk for d in page}
    guard = query.include_where
    found = _include_round(query.includes, page, corpus, seen, guard)
    iterating = [i for i in query.includes if i.iterate]
    frontier, rounds = found, 0
    while frontier and iterating and rounds < MAX_ROUNDS:
        frontier = _include_round(iterating, frontier, corpus, seen, guard)
        found += frontier
        rounds += 1
    return found


def _include_round(
    includes: Iterable[Include],
    sources: list[Indexed],
    corpus: Corpus,
    seen: set[int],
    guard: Node | None,
) -> list[Indexed]:
    new: list[Indexed] = []
    for inc in includes:
        for doc in _included(inc, sources, corpus):
            if guard is not None and not matches(guard, doc, corpus):
                continue
            if doc.pk not in seen:
                seen.add(doc.pk)
                new.append(doc)
    return new


def _included(inc: Include, sources: list[Indexed], corpus: Corpus) -> list[Indexed]:
    if inc.reverse:
        return [
            d
            for s in sources
            if inc.target_type in (None, s.type)
            for d in sorted(corpus.values(), key=lambda x: x.pk)
            if d.type == inc.source_type and _points_at(d, inc.param, s)
        ]
    found: list[Indexed] = []
    for s in (s for s in sources if s.type == inc.source_type):
        for e in s.entries:
            ref = e.value
            if not isinstance(ref, ReferenceValue) or (inc.param != "*" and e.param != inc.param):
                continue
            if inc.target_type not in (None, ref.type) or ref.type is None or ref.id is None:
                continue
            target = corpus.get((ref.type, ref.id))
            found += [target] if target is not None else []
    return found
