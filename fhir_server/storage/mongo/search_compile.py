"""Compile the search expression tree into a MongoDB filter over ``resources``.

A value predicate becomes ``{"idx.<kind>": {"$elemMatch": {"p": param, ...}}}``,
answered by the ``(type, idx.<kind>.p, value...)`` multikey index; AND, OR and
NOT become ``$and``, ``$or`` and ``$nor``. A chain or ``_has`` runs its inner
query first (one extra find) and becomes an ``$in`` on reference ids or on
``_id``: no ``$lookup``, so the emulator and every server version run it alike.

Value semantics (prefixes, modifiers) are those of ``fhir_server.search.match``,
the pure oracle the tests compare against, and mirror the SQLite compiler.
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import (
    And,
    Chain,
    Compare,
    Composite,
    Has,
    Missing,
    Node,
    Not,
    Or,
    ParamType,
)
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.values import (
    DateRange,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    derived_param,
    prefix_upper_bound,
)
from fhir_server.storage.mongo.documents import KIND_OF_TYPE, RESOURCES, Doc, key_of
from fhir_server.storage.mongo.journal import Database

# Served from fields of the resource document; ``_type`` lets access control and
# system search restrict by type inside the tree.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated", "_type"})
FALSE: Doc = {"_id": {"$in": []}}
TRUE: Doc = {}
# Inside ``$elemMatch``: no index element has this field.
NEVER: Doc = {"_never": {"$exists": True}}


@dataclass(frozen=True, slots=True)
class Compiler:
    """Compiles nodes for resources of ``types``; chains and ``_has`` query ``db``."""

    db: Database
    registry: SearchRegistry

    async def filter(self, node: Node, types: tuple[str, ...]) -> Doc:
        """A filter on ``resources`` that holds for documents matching ``node``."""
        if isinstance(node, Compare):
            return self._compare(node, types)
        if isinstance(node, And):
            return {"$and": [await self.filter(p, types) for p in node.parts]}
        if isinstance(node, Or):
            return {"$or": [await self.filter(p, types) for p in node.parts]}
        if isinstance(node, Not):
            return {"$nor": [await self.filter(node.part, types)]}
        if isinstance(node, Missing):
            return self._missing(node, types)
        if isinstance(node, Composite):
            return _composite(node)
        if isinstance(node, Chain):
            return await self._chain(node, types)
        return await self._has(node, types)

    async def matching(self, types: tuple[str, ...], node: Node | None) -> Doc:
        """Current, non-deleted resources of ``types`` matching ``node``."""
        base: Doc = {"type": types[0] if len(types) == 1 else {"$in": list(types)}}
        base["deleted"] = False
        if node is None:
            return base
        return {"$and": [base, await self.filter(node, types)]}

    def _compare(self, node: Compare, types: tuple[str, ...]) -> Doc:
        if node.modifier == "not":
            plain = Compare(node.param, node.type, node.value, node.prefix)
            return {"$nor": [self._compare(plain, types)]}
        if node.param in COLUMN_PARAMS:
            return _column_compare(node)
        kind, param = _kind_and_param(node)
        return {f"idx.{kind}": {"$elemMatch": {"p": param, **value_test(node)}}}

    def _missing(self, node: Missing, types: tuple[str, ...]) -> Doc:
        if node.param in COLUMN_PARAMS:
            return FALSE if node.missing else TRUE
        kind = KIND_OF_TYPE.get(self._param_type(node.param, types))
        if kind is None or kind == "composite":
            raise InvalidSearch(f"Parameter {node.param!r} does not support :missing")
        field = f"idx.{kind}.p"
        return {field: {"$ne": node.param}} if node.missing else {field: node.param}

    def _param_type(self, code: str, types: tuple[str, ...]) -> ParamType:
        param = self.registry.common_param(types, code)
        if param is None:
            raise InvalidSearch(f"Unknown search parameter {code!r} for {', '.join(types)}")
        return param.type

    async def _chain(self, node: Chain, types: tuple[str, ...]) -> Doc:
        where = await self.matching((node.target_type,), node.where)
        found = await self.db[RESOURCES].find(where, {"id": 1}).to_list(None)
        ids = sorted({d["id"] for d in found})
        test = {"p": node.param, "rt": node.target_type, "ri": {"$in": ids}}
        return {"idx.reference": {"$elemMatch": test}} if ids else FALSE

    async def _has(self, node: Has, types: tuple[str, ...]) -> Doc:
        where = await self.matching((node.source_type,), node.where)
        sources = await self.db[RESOURCES].find(where, {"idx.reference": 1}).to_list(None)
        keys = {
            key_of(ref["rt"], ref["ri"])
            for doc in sources
            for ref in doc.get("idx", {}).get("reference", ())
            if (node.param == "*" or ref["p"] == node.param)
            and ref.get("rt") in types
            and ref.get("ri") is not None
        }
        return {"_id": {"$in": sorted(keys)}} if keys else FALSE


def _kind_and_param(node: Compare) -> tuple[str, str]:
    if node.type == "reference" and node.modifier == "identifier":
        return "token", derived_param(node.param, "identifier")
    if node.type == "token" and node.modifier == "of-type":
        return "token", derived_param(node.param, "of-type")
    kind = KIND_OF_TYPE.get(node.type)
    if kind is None or kind == "composite":
        raise InvalidSearch(f"Parameter {node.param!r} of type {node.type} cannot be searched")
    return kind, node.param


def _composite(node: Composite) -> Doc:
    parts: list[Doc] = []
    for i, part in enumerate(node.parts):
        _kind_and_param(part)  # refuses unsearchable component types
        parts.append(_prefixed(value_test(part), f"c{i}."))
    return {"idx.composite": {"$elemMatch": {"p": node.param, "$and": parts}}}


def _prefixed(test: Doc, prefix: str) -> Doc:
    """``test`` on the fields of a sub-document ``prefix``."""
    out: Doc = {}
    for key, value in test.items():
        if key in ("$and", "$or", "$nor"):
            out[key] = [_prefixed(sub, prefix) for sub in value]
        else:
            out[prefix + key] = value
    return out


def _column_compare(node: Compare) -> Doc:
    if node.param in ("_id", "_type"):
        value = node.value
        if not isinstance(value, TokenValue) or value.code is None:
            return FALSE
        return {"id" if node.param == "_id" else "type": value.code}
    if not isinstance(node.value, DateRange):
        raise InvalidSearch("_lastUpdated needs a date value")
    return point_test("lu", node.value, node.prefix)


def point_test(field: str, p: DateRange, prefix: str) -> Doc:
    """A date test for a field holding an instant ``t``, i.e. the range [t, t+1)."""
    tests: dict[str, Doc] = {
        "eq": {field: {"$gte": p.low, "$lt": p.high}},
        "ap": {field: {"$gte": p.low, "$lt": p.high}},
        "ne": {"$or": [{field: {"$lt": p.low}}, {field: {"$gte": p.high}}]},
        "gt": {field: {"$gte": p.high}},
        "sa": {field: {"$gte": p.high}},
        "ge": {field: {"$gte": p.low}},
        "lt": {field: {"$lt": p.low}},
        "eb": {field: {"$lt": p.low}},
        "le": {field: {"$lt": p.high}},
    }
    return tests[prefix]


def value_test(node: Compare) -> Doc:
    """The test of one index element (inside ``$elemMatch``) against ``node``."""
    value = node.value
    if isinstance(value, StringValue):
        return _string_test(value, node.modifier)
    if isinstance(value, TokenValue):
        return _token_test(value, node.modifier)
    if isinstance(value, DateRange):
        return range_test(value, node.prefix)
    if isinstance(value, QuantityValue):
        return _quantity_test(value, node.prefix)
    if isinstance(value, NumberValue):
        return number_test(value, node.prefix)
    if isinstance(value, ReferenceValue):
        return _reference_test(value)
    if isinstance(value, UriValue):
        return _uri_test(value, node.modifier)
    raise InvalidSearch(f"Unsupported value for parameter {node.param!r}")


def _string_test(value: StringValue, modifier: str | None) -> Doc:
    if modifier == "exact":
        return {"e": value.exact}
    if modifier == "contains":
        return {"n": {"$regex": re.escape(value.normalized)}}
    return {"n": {"$gte": value.normalized, "$lt": prefix_upper_bound(value.normalized)}}


def _token_test(value: TokenValue, modifier: str | None) -> Doc:
    if modifier == "text":
        text = value.text or ""
        return {"t": {"$gte": text, "$lt": prefix_upper_bound(text)}}
    if modifier == "of-type":
        return {"s": value.system, "c": value.code, "t": value.text}
    test: Doc = {}
    if value.code is not None:
        test["c"] = value.code
    if value.system is not None:
        test["s"] = value.system or None  # "" means "no system"
    return test or NEVER


def range_test(p: DateRange, prefix: str) -> Doc:
    """A date test for an indexed range [lo, hi) against the query range ``p``."""
    within: Doc = {"lo": {"$gte": p.low}, "hi": {"$lte": p.high}}
    tests: dict[str, Doc] = {
        "eq": {"lo": {"$gte": p.low, "$lt": p.high}, "hi": {"$lte": p.high}},
        "ne": {"$or": [{"lo": {"$lt": p.low}}, {"hi": {"$gt": p.high}}]},
        "gt": {"hi": {"$gt": p.high}},
        "lt": {"lo": {"$lt": p.low}},
        # The leading bound is implied by the rest (lo < hi); it gives the index a range.
        "ge": {"hi": {"$gt": p.low}, "$or": [{"hi": {"$gt": p.high}}, within]},
        "le": {"lo": {"$lt": p.high}, "$or": [{"lo": {"$lt": p.low}}, within]},
        "sa": {"lo": {"$gte": p.high}},
        "eb": {"hi": {"$lte": p.low}},
        "ap": {"lo": {"$lt": p.high}, "hi": {"$gt": p.low}},
    }
    return tests[prefix]


def number_test(p: NumberValue, prefix: str, field: str = "v") -> Doc:
    """A number test: ``eq``/``ne`` and ``ap`` use the range the parser implied."""
    tests: dict[str, Doc] = {
        "eq": {field: {"$gte": p.low, "$lt": p.high}},
        "ne": {"$or": [{field: {"$lt": p.low}}, {field: {"$gte": p.high}}]},
        "ap": {field: {"$gte": p.low, "$lte": p.high}},
        "gt": {field: {"$gt": p.value}},
        "sa": {field: {"$gt": p.value}},
        "lt": {field: {"$lt": p.value}},
        "eb": {field: {"$lt": p.value}},
        "ge": {field: {"$gte": p.value}},
        "le": {field: {"$lte": p.value}},
    }
    return tests[prefix]


def _quantity_test(value: QuantityValue, prefix: str) -> Doc:
    test = number_test(NumberValue(value.value, value.low, value.high), prefix)
    if value.system is not None:
        test["s"] = value.system
        if value.code is not None:
            test["c"] = value.code
    elif value.code is not None:
        return {"$and": [test, {"$or": [{"c": value.code}, {"u": value.code}]}]}
    return test


def _reference_test(value: ReferenceValue) -> Doc:
    if value.url is not None:
        return {"u": value.url}
    if value.id is None:
        return NEVER
    if value.type is not None:
        return {"ri": value.id, "rt": value.type}
    return {"ri": value.id}


def _uri_test(value: UriValue, modifier: str | None) -> Doc:
    if modifier == "below":
        return {"u": {"$gte": value.uri, "$lt": prefix_upper_bound(value.uri)}}
    if modifier == "above":
        # The stored uri is a prefix of the query's: one of its finitely many prefixes.
        return {"u": {"$in": [value.uri[:i] for i in range(1, len(value.uri) + 1)]}}
    return {"u": value.uri}
