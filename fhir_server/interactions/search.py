"""The search interaction at type, system and compartment level, returning a
``searchset`` Bundle. See https://hl7.org/fhir/R4/http.html#search and
https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.policy import compartment_filter
from fhir_server.errors import InvalidSearch, Issue, NotFound, operation_outcome
from fhir_server.interactions.bundles import bundle, full_url, page_url, resource_json
from fhir_server.interactions.conditional import restricted
from fhir_server.interactions.crud import check_type
from fhir_server.interactions.services import Services
from fhir_server.resources.meta import format_instant
from fhir_server.resources.presentation import present
from fhir_server.search.ast import And, Chain, Compare, Has, Node, Not, Or, SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.search.values import TokenValue
from fhir_server.storage.base import SearchPage, StoredVersion, Transaction

CURSOR_PARAM = "_cursor"
# Matches no resource (an ``_id`` test without a value), in every backend and the oracle.
NOTHING = Compare("_id", "token", TokenValue(None, None))


def _compartment(svc: Services, resource_type: str, patient_id: str) -> Node:
    """Membership of ``Patient/{patient_id}``'s compartment, as a search node.
    See https://hl7.org/fhir/R4/compartmentdefinition-patient.html"""
    node = compartment_filter(svc.policy.compartment, resource_type, patient_id)
    if node is None:
        raise NotFound(f"{resource_type} is not in the Patient compartment")
    return node


async def search(
    svc: Services,
    auth: AuthContext,
    resource_type: str | None,
    params: list[tuple[str, str]],
    *,
    strict: bool = False,
    compartment: str | None = None,
    tx: Transaction | None = None,
    self_path: str | None = None,
) -> dict[str, Any]:
    """Run a search and build its Bundle. ``resource_type`` None is a system search."""
    if resource_type is not None:
        check_type(resource_type)
    parsed = parse_search(resource_type, params, svc.registry, strict=strict)
    query = _authorized_query(svc, auth, parsed.query)
    if compartment is not None and resource_type is not None:
        query = restricted(query, _compartment(svc, resource_type, compartment))
    query = replace(query, count=min(query.count, svc.limits.max_count))
    summary, elements = _presentation(parsed.result_params)
    if summary == "count":
        # _summary=count answers with the total alone
        query = replace(query, total="accurate", includes=())
    page = await (tx.search(query) if tx is not None else svc.store.search(query))
    path = self_path or (resource_type or "")
    base = f"{svc.base_url}/{path}" if path else svc.base_url
    return _searchset(svc, page, base, params, parsed.issues, summary, elements)


async def run_query(
    svc: Services,
    auth: AuthContext,
    query: SearchQuery,
    *,
    path: str,
    params: list[tuple[str, str]],
    issues: list[Issue] | tuple[Issue, ...] = (),
) -> dict[str, Any]:
    """Run a query built by an operation (``$everything``) as the caller may see it."""
    query = _authorized_query(svc, auth, query)
    page = await svc.store.search(query)
    return _searchset(svc, page, f"{svc.base_url}/{path}", params, issues, None, ())


def _presentation(result_params: tuple[tuple[str, str], ...]) -> tuple[str | None, tuple[str, ...]]:
    """``_summary`` and ``_elements`` from the parameters that shape the result."""
    summary: str | None = None
    elements: list[str] = []
    for name, value in result_params:
        if name == "_summary":
            if value not in ("true", "false", "text", "data", "count"):
                raise InvalidSearch(
                    f"_summary={value!r} is not one of true, false, text, data, count"
                )
            summary = None if value == "false" else value
        elif name == "_elements":
            elements += [e.strip() for e in value.split(",") if e.strip()]
    return summary, tuple(elements)


def _authorized_query(svc: Services, auth: AuthContext, query: SearchQuery) -> SearchQuery:
    """The query narrowed to what the caller may see, decided before it runs: the
    matches, every chain and ``_has`` inside them, and what includes may add
    (STYLE.md point 12), so neither results nor totals reveal anything else."""
    searchable = [t for t in query.types if svc.policy.grants(auth, Interaction.SEARCH, t)]
    if len(query.types) == 1 or not searchable:
        # one type: 403 without a grant; several: the others are left out (type_filter)
        svc.policy.authorize(auth, Interaction.SEARCH, query.types[0])
    for include in query.includes:
        svc.policy.authorize(auth, Interaction.SEARCH, include.target_type or include.source_type)
    where = None if query.where is None else confined(svc, auth, query.where)
    guard = type_filter(svc, auth, _included_types(svc, query), Interaction.READ)
    query = replace(query, where=where, include_where=guard)
    return restricted(query, type_filter(svc, auth, query.types, Interaction.SEARCH))


def type_filter(
    svc: Services, auth: AuthContext, types: Sequence[str], action: Interaction
) -> Node | None:
    """What the caller may see among resources of ``types`` (None: all of them).

    One type: its filter. Several: for each type, ``_type`` and that type's
    filter; a type the caller has no grant for is left out.
    """
    if len(types) == 1:
        return svc.policy.search_filter(auth, types[0], action)
    branches: list[Node] = []
    restricted_any = False
    for resource_type in types:
        is_type = Compare("_type", "token", TokenValue(None, resource_type))
        if not svc.policy.grants(auth, action, resource_type):
            restricted_any = True
            continue
        where = svc.policy.search_filter(auth, resource_type, action)
        restricted_any = restricted_any or where is not None
        branches.append(is_type if where is None else And((is_type, where)))
    if not restricted_any:
        return None
    if not branches:
        return NOTHING
    return branches[0] if len(branches) == 1 else Or(tuple(branches))


def confined(svc: Services, auth: AuthContext, node: Node) -> Node:
    """``node`` with every chained target and ``_has`` source narrowed to what the
    caller may search: a chain cannot probe resources the caller cannot see."""
    if isinstance(node, And):
        return And(tuple(confined(svc, auth, p) for p in node.parts))
    if isinstance(node, Or):
        return Or(tuple(confined(svc, auth, p) for p in node.parts))
    if isinstance(node, Not):
        return Not(confined(svc, auth, node.part))
    if isinstance(node, Chain):
        inner = _narrowed(svc, auth, node.target_type, confined(svc, auth, node.where))
        return Chain(node.param, node.target_type, inner)
    if isinstance(node, Has):
        inner = _narrowed(svc, auth, node.source_type, confined(svc, auth, node.where))
        return Has(node.source_type, node.param, inner)
    return node


def _narrowed(svc: Services, auth: AuthContext, resource_type: str, node: Node) -> Node:
    where = svc.policy.search_filter(auth, resource_type)  # Forbidden without a grant
    return node if where is None else And((node, where))


def _included_types(svc: Services, query: SearchQuery) -> tuple[str, ...]:
    """Every type an ``_include``/``_revinclude`` of ``query`` can bring in."""
    found: dict[str, None] = {}
    for include in query.includes:
        if include.reverse:
            found[include.source_type] = None
        elif include.target_type is not None:
            found[include.target_type] = None
        elif include.param == "*":
            return svc.registry.types
        else:
            param = svc.registry.param(include.source_type, include.param)
            targets = param.targets if param is not None and param.targets else svc.registry.types
            found.update((t, None) for t in targets if svc.registry.supports(t))
    return tuple(found)


def _entry(
    svc: Services, version: StoredVersion, mode: str, summary: str | None, elements: tuple[str, ...]
) -> dict[str, Any]:
    resource = resource_json(version) or {}
    return {
        "fullUrl": full_url(svc.base_url, version),
        "resource": present(resource, summary=summary, elements=elements),
        "search": {"mode": mode},
    }


def _searchset(
    svc: Services,
    page: SearchPage,
    base: str,
    params: list[tuple[str, str]],
    issues: list[Issue] | tuple[Issue, ...],
    summary: str | None,
    elements: tuple[str, ...],
) -> dict[str, Any]:
    links = [("self", page_url(base, params))]
    # _summary=count has no entries, so no pages to move between
    paged = summary != "count"
    if paged and page.next_cursor is not None:
        links.append(("next", page_url(base, params, **{CURSOR_PARAM: page.next_cursor})))
    if paged and page.previous_cursor is not None:
        links.append(("previous", page_url(base, params, **{CURSOR_PARAM: page.previous_cursor})))
    entries: list[dict[str, Any]] = []
    if paged:
        entries = [_entry(svc, v, "match", summary, elements) for v in page.matches]
        entries += [_entry(svc, v, "include", summary, elements) for v in page.includes]
    if issues:
        entries.append({"resource": operation_outcome(list(issues)), "search": {"mode": "outcome"}})
    return bundle(
        "searchset",
        entries,
        total=page.total,
        links=links,
        timestamp=format_instant(svc.clock()),
    )
