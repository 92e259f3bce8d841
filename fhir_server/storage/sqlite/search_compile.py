"""Compile the search expression tree into SQL over the index tables.

Every predicate becomes ``alias.pk IN (SELECT pk FROM <index table> WHERE
type IN (...) AND param = ? AND <value test>)``: the subquery is answered from
the ``(type, param, value..., pk)`` index and the outer row is then found by
its integer primary key, so no search scans a whole table. Chains and ``_has``
join the reference table to ``resources`` on ``UNIQUE(type, id)``.

Value semantics (prefixes, modifiers) are those of ``fhir_server.search.match``,
the pure oracle the tests compare this module against.
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

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

# Served from columns of ``resources``; ``_type`` lets access control and
# system search restrict by type inside the tree.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated", "_type"})

TABLE_OF_TYPE: dict[str, str] = {
    "string": "search_string",
    "token": "search_token",
    "date": "search_date",
    "number": "search_number",
    "quantity": "search_quantity",
    "reference": "search_reference",
    "uri": "search_uri",
}


@dataclass(frozen=True, slots=True)
class Frag:
    """A piece of SQL with its positional arguments."""

    sql: str
    args: tuple[object, ...] = ()


def join(sep: str, frags: Sequence[Frag]) -> Frag:
    return Frag(sep.join(f.sql for f in frags), tuple(a for f in frags for a in f.args))


FALSE = Frag("0")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Where a condition applies: the ``resources`` alias, its types, nesting depth."""

    alias: str
    types: tuple[str, ...]
    registry: SearchRegistry
    depth: int = 0

    def nested(self, alias: str, types: tuple[str, ...]) -> Ctx:
        return Ctx(alias, types, self.registry, self.depth + 1)


def type_in(column: str, types: Sequence[str]) -> Frag:
    if len(types) == 1:
        return Frag(f"{column} = ?", (types[0],))
    return Frag(f"{column} IN ({', '.join('?' * len(types))})", tuple(types))


def condition(node: Node, ctx: Ctx) -> Frag:
    """A boolean SQL expression on ``ctx.alias`` that holds when it matches ``node``."""
    if isinstance(node, Compare) and node.param in COLUMN_PARAMS:
        return _column_compare(node, ctx.alias)
    if isinstance(node, Compare) and node.modifier == "not":
        plain = Compare(node.param, node.type, node.value, node.prefix)
        return Frag(f"NOT ({condition(plain, ctx).sql})", condition(plain, ctx).args)
    if isinstance(node, And):
        return _wrap(join(" AND ", [condition(p, ctx) for p in node.parts]))
    if isinstance(node, Or):
        return _or(node, ctx)
    if isinstance(node, Not):
        inner = condition(node.part, ctx)
        return Frag(f"NOT ({inner.sql})", inner.args)
    if isinstance(node, Missing):
        return _missing(node, ctx)
    subquery = pk_set(node, ctx)
    return Frag(f"{ctx.alias}.pk IN ({subquery.sql})", subquery.args)


def _wrap(frag: Frag) -> Frag:
    return Frag(f"({frag.sql})", frag.args)


def _or(node: Or, ctx: Ctx) -> Frag:
    # A union of index lookups keeps every branch on its index; a plain OR of
    # IN-terms may make SQLite scan the outer table.
    if all(_is_set(p) for p in node.parts):
        union = _union([pk_set(p, ctx) for p in node.parts])
        return Frag(f"{ctx.alias}.pk IN ({union.sql})", union.args)
    return _wrap(join(" OR ", [condition(p, ctx) for p in node.parts]))


# SQLite takes at most 500 terms in one compound SELECT (SQLITE_MAX_COMPOUND_SELECT),
# and a client may OR more values than that (the results of 600 patients in one
# search): a larger union is built of nested groups, each a term of the one above.
UNION_GROUP = 250


def _union(sets: list[Frag]) -> Frag:
    """``sets`` (each a ``SELECT pk``) in one UNION, nested in groups when many."""
    if len(sets) <= UNION_GROUP:
        return join(" UNION ", sets)
    # each set may be a compound itself (a date's spans): one term each, as subqueries
    terms = [Frag(f"SELECT pk FROM ({s.sql})", s.args) for s in sets]
    groups = [
        join(" UNION ", terms[i : i + UNION_GROUP]) for i in range(0, len(terms), UNION_GROUP)
    ]
    return _union([Frag(f"SELECT pk FROM ({g.sql})", g.args) for g in groups])


def _is_set(node: Node) -> bool:
    if isinstance(node, Compare):
        return node.param not in COLUMN_PARAMS and node.modifier != "not"
    return isinstance(node, Composite | Chain | Has) or typed(node) is not None


def typed(node: Node) -> tuple[str, Node] | None:
    """``And(_type=T, rest)`` where ``rest`` has a lookup (or is ``_id``): (T, rest).

    Access control and ``$everything`` build one such branch per type; as a set
    each branch is answered by its own index lookup instead of a walk of
    every resource of every type.
    """
    if not isinstance(node, And):
        return None
    kinds = [p for p in node.parts if _is_type_test(p)]
    if len(kinds) != 1:
        return None
    rest = tuple(p for p in node.parts if p is not kinds[0])
    body: Node = rest[0] if len(rest) == 1 else And(rest)
    if not (drives(body) or _is_id_test(body)):
        return None
    value = cast(Compare, kinds[0]).value
    return cast(TokenValue, value).code or "", body


def _is_type_test(node: Node) -> bool:
    return (
        isinstance(node, Compare)
        and node.param == "_type"
        and node.modifier is None
        and isinstance(node.value, TokenValue)
        and bool(node.value.code)
    )


def _is_id_test(node: Node) -> bool:
    return isinstance(node, Compare) and node.param == "_id" and node.modifier is None


def _typed_set(resource_type: str, body: Node, ctx: Ctx) -> Frag:
    inner = Ctx(ctx.alias, (resource_type,), ctx.registry, ctx.depth)
    if _is_id_test(body):
        value = cast(Compare, body).value
        code = value.code if isinstance(value, TokenValue) else None
        sql = "SELECT pk FROM resources WHERE type = ? AND id = ? AND deleted = 0"
        return Frag(sql, (resource_type, code))
    if _is_set(body):
        return pk_set(body, inner)
    where = condition(body, Ctx("x", (resource_type,), ctx.registry, ctx.depth + 1))
    sql = f"SELECT x.pk FROM resources x WHERE +x.type = ? AND x.deleted = 0 AND {where.sql}"
    return Frag(sql, (resource_type, *where.args))


def drives(node: Node) -> bool:
    """Whether ``node`` must hold an index lookup that can drive the search."""
    if isinstance(node, And):
        return any(drives(p) for p in node.parts)
    if isinstance(node, Or):
        return all(_is_set(p) for p in node.parts)
    return _is_set(node)


def _plus(node: Node) -> str:
    """``+`` (no index on the type column) when ``node`` has a lookup to start from."""
    return "+" if drives(node) else ""


def pk_set(node: Node, ctx: Ctx) -> Frag:
    """A ``SELECT pk`` of the resources (of ``ctx.types``) matching ``node``."""
    if isinstance(node, Compare):
        return _compare_set(node, ctx)
    if isinstance(node, Composite):
        return _composite_set(node, ctx)
    if isinstance(node, Chain):
        return _chain_set(node, ctx)
    if isinstance(node, Has):
        return _has_set(node, ctx)
    kind = typed(node)
    if kind is not None:
        return _typed_set(kind[0], kind[1], ctx)
    inner = condition(node, Ctx("x", ctx.types, ctx.registry, ctx.depth))
    where = join(" AND ", [type_in("x.type", ctx.types), inner])
    return Frag(f"SELECT x.pk FROM resources x WHERE x.deleted = 0 AND {where.sql}", where.args)


def table_and_param(node: Compare) -> tuple[str, str]:
    if node.type == "reference" and node.modifier == "identifier":
        return "search_token", derived_param(node.param, "identifier")
    if node.type == "token" and node.modifier == "of-type":
        return "search_token", derived_param(node.param, "of-type")
    if node.type not in TABLE_OF_TYPE:
        raise InvalidSearch(f"Parameter {node.param!r} of type {node.type} cannot be searched")
    return TABLE_OF_TYPE[node.type], node.param


def _compare_set(node: Compare, ctx: Ctx) -> Frag:
    table, param = table_and_param(node)
    test = value_test(node, "")
    where = join(" AND ", [type_in("type", ctx.types), Frag("param = ?", (param,)), test])
    return Frag(f"SELECT pk FROM {table} WHERE {where.sql}", where.args)


def _composite_set(node: Composite, ctx: Ctx) -> Frag:
    parts: list[Frag] = []
    joins: list[str] = []
    for i, part in enumerate(node.parts):
        table, param = table_and_param(part)
        alias = f"c{ctx.depth}_{i}"
        if i:
            first = f"c{ctx.depth}_0"
            joins.append(
                f"JOIN {table} {alias} ON {alias}.pk = {first}.pk AND {alias}.grp = {first}.grp"
            )
        else:
            joins.append(f"{table} {alias}")
        parts.append(type_in(f"{alias}.type", ctx.types))
        parts.append(Frag(f"{alias}.param = ?", (param,)))
        parts.append(value_test(part, f"{alias}."))
    where = join(" AND ", parts)
    return Frag(f"SELECT c{ctx.depth}_0.pk FROM {' '.join(joins)} WHERE {where.sql}", where.args)


def _chain_set(node: Chain, ctx: Ctx) -> Frag:
    ref, target = f"ref{ctx.depth}", f"t{ctx.depth}"
    inner = condition(node.where, ctx.nested(target, (node.target_type,)))
    where = join(
        " AND ",
        [
            Frag(
                f"{_plus(node.where)}{target}.type = ? AND {target}.deleted = 0",
                (node.target_type,),
            ),
            inner,
            type_in(f"{ref}.type", ctx.types),
            Frag(f"{ref}.param = ?", (node.param,)),
        ],
    )
    # CROSS JOIN fixes the order: first the targets that match (usually few),
    # then the references to them (search_reference_target), never every reference.
    sql = (
        f"SELECT {ref}.pk FROM resources {target} CROSS JOIN search_reference {ref}"
        f" ON {ref}.ref_type = {target}.type AND {ref}.ref_id = {target}.id WHERE {where.sql}"
    )
    return Frag(sql, where.args)


def _has_set(node: Has, ctx: Ctx) -> Frag:
    ref, source, target = f"hr{ctx.depth}", f"hs{ctx.depth}", f"ht{ctx.depth}"
    inner = condition(node.where, ctx.nested(source, (node.source_type,)))
    where = join(
        " AND ",
        [
            Frag(
                f"{_plus(node.where)}{source}.type = ? AND {source}.deleted = 0",
                (node.source_type,),
            ),
            inner,
            Frag(f"{ref}.param = ?", (node.param,)),
            type_in(f"{target}.type", ctx.types),
        ],
    )
    # Sources that match first, then their references (by pk), then the targets.
    sql = (
        f"SELECT {target}.pk FROM resources {source}"
        f" CROSS JOIN search_reference {ref} ON {ref}.pk = {source}.pk"
        f" CROSS JOIN resources {target}"
        f" ON {target}.type = {ref}.ref_type AND {target}.id = {ref}.ref_id"
        f" WHERE {where.sql}"
    )
    return Frag(sql, where.args)


def _missing(node: Missing, ctx: Ctx) -> Frag:
    if node.param in COLUMN_PARAMS:
        return FALSE if node.missing else Frag("1")
    param_type = _param_type(node.param, ctx)
    table = TABLE_OF_TYPE.get(param_type)
    if table is None:
        raise InvalidSearch(f"Parameter {node.param!r} does not support :missing")
    where = join(" AND ", [type_in("type", ctx.types), Frag("param = ?", (node.param,))])
    negate = "NOT " if node.missing else ""
    return Frag(f"{ctx.alias}.pk {negate}IN (SELECT pk FROM {table} WHERE {where.sql})", where.args)


def _param_type(code: str, ctx: Ctx) -> ParamType:
    param = ctx.registry.common_param(ctx.types, code)
    if param is None:
        raise InvalidSearch(f"Unknown search parameter {code!r} for {', '.join(ctx.types)}")
    return param.type


def _column_compare(node: Compare, alias: str) -> Frag:
    if node.param in ("_id", "_type"):
        value = node.value
        if not isinstance(value, TokenValue) or value.code is None:
            return FALSE
        column = "id" if node.param == "_id" else "type"
        return Frag(f"{alias}.{column} = ?", (value.code,))
    if not isinstance(node.value, DateRange):
        raise InvalidSearch("_lastUpdated needs a date value")
    return point_test(f"{alias}.last_updated", node.value, node.prefix)


def point_test(column: str, p: DateRange, prefix: str) -> Frag:
    """A date test for a column holding an instant ``t``, i.e. the range [t, t+1)."""
    tests = {
        "eq": (f"{column} >= ? AND {column} < ?", (p.low, p.high)),
        "ap": (f"{column} >= ? AND {column} < ?", (p.low, p.high)),
        "ne": (f"({column} < ? OR {column} >= ?)", (p.low, p.high)),
        "gt": (f"{column} >= ?", (p.high,)),
        "sa": (f"{column} >= ?", (p.high,)),
        "ge": (f"{column} >= ?", (p.low,)),
        "lt": (f"{column} < ?", (p.low,)),
        "eb": (f"{column} < ?", (p.low,)),
        "le": (f"{column} < ?", (p.high,)),
    }
    sql, args = tests[prefix]
    return Frag(sql, args)


def value_test(node: Compare, col: str) -> Frag:
    """The test of one index row (columns prefixed by ``col``) against ``node``."""
    value = node.value
    if isinstance(value, StringValue):
        return _string_test(value, node.modifier, col)
    if isinstance(value, TokenValue):
        return _token_test(value, node, col)
    if isinstance(value, DateRange):
        return range_test(f"{col}low", f"{col}high", value, node.prefix)
    if isinstance(value, QuantityValue):
        return _quantity_test(value, node.prefix, col)
    if isinstance(value, NumberValue):
        return number_test(f"{col}value", value, node.prefix)
    if isinstance(value, ReferenceValue):
        return _reference_test(value, col)
    if isinstance(value, UriValue):
        return _uri_test(value, node.modifier, col)
    raise InvalidSearch(f"Unsupported value for parameter {node.param!r}")


def _string_test(value: StringValue, modifier: str | None, col: str) -> Frag:
    if modifier == "exact":
        return Frag(f"{col}exact = ?", (value.exact,))
    if modifier == "contains":
        return Frag(f"instr({col}norm, ?) > 0", (value.normalized,))
    upper = prefix_upper_bound(value.normalized)
    return Frag(f"{col}norm >= ? AND {col}norm < ?", (value.normalized, upper))


def _token_test(value: TokenValue, node: Compare, col: str) -> Frag:
    if node.modifier == "text":
        text = value.text or ""
        return Frag(f"{col}text >= ? AND {col}text < ?", (text, prefix_upper_bound(text)))
    if node.modifier == "of-type":
        return Frag(
            f"{col}system IS ? AND {col}code = ? AND {col}text = ?",
            (value.system, value.code, value.text),
        )
    parts: list[Frag] = []
    if value.code is not None:
        parts.append(Frag(f"{col}code = ?", (value.code,)))
    if value.system == "":
        parts.append(Frag(f"{col}system IS NULL"))
    elif value.system is not None:
        parts.append(Frag(f"{col}system = ?", (value.system,)))
    return join(" AND ", parts) if parts else FALSE


# Width classes of stored date ranges, ``high - low`` in microseconds: up to a
# second, minute, hour, day, month and year (what a date at each precision
# covers), then wider (periods, open ends). A row of class ``c`` that ends after
# ``t`` starts after ``t - SPAN_WIDTHS[c]``: within a class, ``low`` is bounded
# on both sides by a band [t1, t2) (``search_date_band`` serves it).
_SECOND, _DAY = 10**6, 86_400 * 10**6
SPAN_WIDTHS = (_SECOND, 60 * _SECOND, 3_600 * _SECOND, _DAY, 31 * _DAY, 366 * _DAY)
SPAN_WIDE = len(SPAN_WIDTHS)
# One of several values of the parameter in one resource (``grp`` = MULTI_GRP):
# the resource may match a band with a value before it and another after it.
SPAN_MULTI = SPAN_WIDE + 1
MULTI_GRP = -1


def span_class(col: str = "") -> str:
    """The width class of a ``search_date`` row: the expression ``search_date_band``
    indexes (a query must spell it the same way for SQLite to use the index)."""
    ladder = " ".join(
        f"WHEN {col}high - {col}low <= {width} THEN {c}" for c, width in enumerate(SPAN_WIDTHS)
    )
    return f"CASE WHEN {col}grp < 0 THEN {SPAN_MULTI} {ladder} ELSE {SPAN_WIDE} END"


@dataclass(frozen=True, slots=True)
class Band:
    """Predicates on one date parameter (``parts``) that every row in
    ``high > after`` and ``low < before`` may meet, and no row outside it alone."""

    param: str
    after: int
    before: int
    parts: tuple[Compare, ...]


# Per prefix, what a matching row implies: a lower bound on ``high`` (exclusive)
# and an upper bound on ``low`` (exclusive), from the query range (low, high).
_BAND_BOUNDS: dict[str, tuple[str | None, str | None]] = {
    "eq": ("low", "high"),
    "ap": ("low", "high"),
    "ge": ("low", None),
    "gt": ("high", None),
    "sa": ("high", None),
    "lt": (None, "low"),
    "eb": (None, "low"),
    "le": (None, "high"),
    "ne": (None, None),
}


def band_of(parts: Sequence[Node]) -> Band | None:
    """The narrowest band on one date parameter that ANDed ``parts`` imply, if any.

    A resource that matches all of ``parts`` has a row in the band, or has
    several values of the parameter (then all its rows are of class ``SPAN_MULTI``).
    """
    found: dict[str, list[Compare]] = {}
    for part in parts:
        if (
            isinstance(part, Compare)
            and part.type == "date"
            and part.modifier is None
            and part.param not in COLUMN_PARAMS
            and isinstance(part.value, DateRange)
        ):
            found.setdefault(part.param, []).append(part)
    for param, compares in found.items():
        afters = [_bound(c, 0) for c in compares]
        befores = [_bound(c, 1) for c in compares]
        after = max((a for a in afters if a is not None), default=None)
        before = min((b for b in befores if b is not None), default=None)
        if after is not None and before is not None:
            return Band(param, after, before, tuple(compares))
    return None


def _bound(node: Compare, side: int) -> int | None:
    end = _BAND_BOUNDS[node.prefix][side]
    return None if end is None else cast(int, getattr(node.value, end))


def range_test(low: str, high: str, p: DateRange, prefix: str) -> Frag:
    """A date test for an indexed range [low, high) against the query range ``p``.

    ``eq`` means the value lies within ``p``; ``ge``/``le`` also accept values
    within ``p``; ``ap`` means overlap (the parser has widened ``p``).
    """
    within = f"{low} >= ? AND {high} <= ?"
    tests = {
        "eq": (f"{within} AND {low} < ?", (p.low, p.high, p.high)),
        "ne": (f"NOT ({within})", (p.low, p.high)),
        "gt": (f"{high} > ?", (p.high,)),
        "lt": (f"{low} < ?", (p.low,)),
        # The leading bounds are implied by the rest (low < high); they give the
        # index a range to search instead of every row of the parameter.
        "ge": (f"{high} > ? AND ({high} > ? OR ({within}))", (p.low, p.high, p.low, p.high)),
        "le": (f"{low} < ? AND ({low} < ? OR ({within}))", (p.high, p.low, p.low, p.high)),
        "sa": (f"{low} >= ?", (p.high,)),
        "eb": (f"{high} <= ?", (p.low,)),
        "ap": (f"{low} < ? AND {high} > ?", (p.high, p.low)),
    }
    sql, args = tests[prefix]
    return Frag(sql, args)


def number_test(column: str, p: NumberValue, prefix: str) -> Frag:
    """A number test: ``eq``/``ne`` and ``ap`` use the range the parser implied."""
    tests = {
        "eq": (f"{column} >= ? AND {column} < ?", (p.low, p.high)),
        "ne": (f"({column} < ? OR {column} >= ?)", (p.low, p.high)),
        "ap": (f"{column} >= ? AND {column} <= ?", (p.low, p.high)),
        "gt": (f"{column} > ?", (p.value,)),
        "sa": (f"{column} > ?", (p.value,)),
        "lt": (f"{column} < ?", (p.value,)),
        "eb": (f"{column} < ?", (p.value,)),
        "ge": (f"{column} >= ?", (p.value,)),
        "le": (f"{column} <= ?", (p.value,)),
    }
    sql, args = tests[prefix]
    return Frag(sql, args)


def _quantity_test(value: QuantityValue, prefix: str, col: str) -> Frag:
    number = NumberValue(value.value, value.low, value.high)
    parts = [number_test(f"{col}value", number, prefix)]
    if value.system is not None:
        parts.append(Frag(f"{col}system = ?", (value.system,)))
        if value.code is not None:
            parts.append(Frag(f"{col}code = ?", (value.code,)))
    elif value.code is not None:
        parts.append(Frag(f"({col}code = ? OR {col}unit = ?)", (value.code, value.code)))
    return join(" AND ", parts)


def _reference_test(value: ReferenceValue, col: str) -> Frag:
    if value.url is not None:
        return Frag(f"{col}url = ?", (value.url,))
    if value.id is None:
        return FALSE
    if value.type is not None:
        return Frag(f"{col}ref_id = ? AND {col}ref_type = ?", (value.id, value.type))
    return Frag(f"{col}ref_id = ?", (value.id,))


def _uri_test(value: UriValue, modifier: str | None, col: str) -> Frag:
    if modifier == "below":
        return Frag(f"{col}uri >= ? AND {col}uri < ?", (value.uri, prefix_upper_bound(value.uri)))
    if modifier == "above":
        return Frag(f"substr(?, 1, length({col}uri)) = {col}uri", (value.uri,))
    return Frag(f"{col}uri = ?", (value.uri,))
