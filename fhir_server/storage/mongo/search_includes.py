"""``_include`` and ``_revinclude`` for MongoDB search, with ``:iterate``.

Non-iterating includes apply to the page's matches; iterating ones apply again
to what was included, until nothing new turns up (bounded, as in the SQLite
adapter). A forward include reads the references out of the sources' index and
fetches the targets by ``_id``; a reverse one finds the sources by an
``$elemMatch`` on their reference index.
See https://hl7.org/fhir/R4/search.html#include
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING

from fhir_server.search.ast import Include, SearchQuery
from fhir_server.storage.mongo.documents import RESOURCES, Doc, key_of
from fhir_server.storage.mongo.search_compile import TRUE, Compiler

MAX_ROUNDS = 4
_CHUNK = 500


async def resolve_includes(
    compiler: Compiler, query: SearchQuery, page: Sequence[Doc]
) -> list[Doc]:
    """The documents the page's includes bring in, matches excluded, in pk order per include."""
    if not query.includes or not page:
        return []
    seen = {int(d["pk"]) for d in page}
    guard = TRUE
    if query.include_where is not None:
        guard = await compiler.filter(query.include_where, compiler.registry.types)
    found = await _round(compiler, query.includes, page, seen, guard)
    iterating = tuple(i for i in query.includes if i.iterate)
    frontier, rounds = found, 0
    while frontier and iterating and rounds < MAX_ROUNDS:
        frontier = await _round(compiler, iterating, frontier, seen, guard)
        found += frontier
        rounds += 1
    return found


async def _round(
    compiler: Compiler,
    includes: Sequence[Include],
    sources: Sequence[Doc],
    seen: set[int],
    guard: Doc,
) -> list[Doc]:
    new: list[Doc] = []
    for include in includes:
        if include.reverse:
            docs = await _reverse(compiler, include, sources, guard)
        else:
            docs = await _forward(compiler, include, sources, guard)
        for doc in docs:
            if int(doc["pk"]) not in seen:
                seen.add(int(doc["pk"]))
                new.append(doc)
    return new


def _param_ok(include: Include, ref: Doc) -> bool:
    return include.param == "*" or ref["p"] == include.param


async def _forward(
    compiler: Compiler, include: Include, sources: Sequence[Doc], guard: Doc
) -> list[Doc]:
    keys = sorted(
        {
            key_of(ref["rt"], ref["ri"])
            for doc in sources
            if doc["type"] == include.source_type
            for ref in doc.get("idx", {}).get("reference", ())
            if _param_ok(include, ref)
            and ref.get("rt") is not None
            and ref.get("ri") is not None
            and include.target_type in (None, ref["rt"])
        }
    )
    found: list[Doc] = []
    for start in range(0, len(keys), _CHUNK):
        where = {"_id": {"$in": keys[start : start + _CHUNK]}, "deleted": False}
        found += await _find(compiler, where, guard)
    return sorted(found, key=lambda d: int(d["pk"]))


async def _reverse(
    compiler: Compiler, include: Include, sources: Sequence[Doc], guard: Doc
) -> list[Doc]:
    by_type: dict[str, list[str]] = {}
    for doc in sources:
        if include.target_type in (None, doc["type"]):
            by_type.setdefault(str(doc["type"]), []).append(str(doc["id"]))
    found: list[Doc] = []
    for target_type, ids in by_type.items():
        for start in range(0, len(ids), _CHUNK):
            test: Doc = {"rt": target_type, "ri": {"$in": ids[start : start + _CHUNK]}}
            if include.param != "*":
                test["p"] = include.param
            where = {
                "type": include.source_type,
                "deleted": False,
                "idx.reference": {"$elemMatch": test},
            }
            found += await _find(compiler, where, guard)
    unique = {int(d["pk"]): d for d in found}
    return [unique[pk] for pk in sorted(unique)]


async def _find(compiler: Compiler, where: Doc, guard: Doc) -> list[Doc]:
    query = {"$and": [where, guard]} if guard else where
    cursor = compiler.db[RESOURCES].find(query, {"sort": 0}).sort("pk", ASCENDING)
    docs: list[Doc] = await cursor.to_list(None)
    return docs
