"""Compile the search tree into per-row checks (correlated ``EXISTS``) for SQLite.

``search_compile`` turns predicates into sets (``pk IN (SELECT pk ...)``) so a
selective lookup can drive the search. When nothing in the query is selective
(``status=available`` matches most studies), materialising those sets costs a
walk of most of the index; instead the page walks an index in sort order and
checks each row with the functions here, each answered by the ``(pk, param)``
index of its table (or ``search_reference_target`` for ``_has``) and stopping
at the page size. Semantics are those of ``search_compile`` (and ``match.py``).
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from fhir_server.search.ast import And, Chain, Compare, Has, Missing, Node, Not, Or
from fhir_server.storage.sqlite.search_compile import (
    COLUMN_PARAMS,
    TABLE_OF_TYPE,
    Ctx,
    Frag,
    condition,
    join,
    table_and_param,
    value_test,
)


def check(node: Node, ctx: Ctx) -> Frag:
    """A boolean SQL expression on ``ctx.alias``, evaluated row by row."""
    if isinstance(node, And):
        return _wrap(join(" AND ", [check(p, ctx) for p in node.parts]))
    if isinstance(node, Or):
        return _wrap(join(" OR ", [check(p, ctx) for p in node.parts]))
    if isinstance(node, Not):
        inner = check(node.part, ctx)
        return Frag(f"NOT ({inner.sql})", inner.args)
    if isinstance(node, Compare) and node.param not in COLUMN_PARAMS:
        return _compare(node, ctx)
    if isinstance(node, Missing) and node.param not in COLUMN_PARAMS:
        return _missing(node, ctx)
    if isinstance(node, Chain):
        return _chain(node, ctx)
    if isinstance(node, Has):
        return _has(node, ctx)
    return condition(node, ctx)  # columns of the row itself, and composites


def _wrap(frag: Frag) -> Frag:
    return Frag(f"({frag.sql})", frag.args)


def _compare(node: Compare, ctx: Ctx) -> Frag:
    if node.modifier == "not":
        plain = _compare(Compare(node.param, node.type, node.value, node.prefix), ctx)
        return Frag(f"NOT {plain.sql}", plain.args)
    table, param = table_and_param(node)
    v = f"v{ctx.depth}"
    test = value_test(node, f"{v}.")
    sql = f"EXISTS (SELECT 1 FROM {table} {v} WHERE {v}.pk = {ctx.alias}.pk AND {v}.param = ?"
    return Frag(f"{sql} AND {test.sql})", (param, *test.args))


def _missing(node: Missing, ctx: Ctx) -> Frag:
    param = ctx.registry.common_param(ctx.types, node.param)
    table = TABLE_OF_TYPE.get(param.type) if param is not None else None
    if table is None:
        return condition(node, ctx)  # raises the same error as the set form
    negate = "NOT " if node.missing else ""
    sql = f"{negate}EXISTS (SELECT 1 FROM {table} m WHERE m.pk = {ctx.alias}.pk AND m.param = ?)"
    return Frag(sql, (node.param,))


def _chain(node: Chain, ctx: Ctx) -> Frag:
    ref, target = f"cr{ctx.depth}", f"ct{ctx.depth}"
    inner = check(node.where, ctx.nested(target, (node.target_type,)))
    sql = (
        f"EXISTS (SELECT 1 FROM search_reference {ref} CROSS JOIN resources {target}"
        f" ON {target}.type = {ref}.ref_type AND {target}.id = {ref}.ref_id"
        f" WHERE {ref}.pk = {ctx.alias}.pk AND {ref}.param = ? AND {ref}.ref_type = ?"
        f" AND {target}.deleted = 0 AND {inner.sql})"
    )
    return Frag(sql, (node.param, node.target_type, *inner.args))


def _has(node: Has, ctx: Ctx) -> Frag:
    ref, source = f"hr{ctx.depth}", f"hs{ctx.depth}"
    inner = check(node.where, ctx.nested(source, (node.source_type,)))
    sql = (
        f"EXISTS (SELECT 1 FROM search_reference {ref} CROSS JOIN resources {source}"
        f" ON {source}.pk = {ref}.pk"
        f" WHERE {ref}.ref_type = {ctx.alias}.type AND {ref}.ref_id = {ctx.alias}.id"
        f" AND {ref}.param = ? AND {ref}.type = ? AND {source}.deleted = 0 AND {inner.sql})"
    )
    return Frag(sql, (node.param, node.source_type, *inner.args))
