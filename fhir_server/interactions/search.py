"""The search interaction at type, system and compartment level, returning a
``searchset`` Bundle. See https://hl7.org/fhir/R4/http.html#search and
https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.policy import compartment_filter
from fhir_server.errors import InvalidSearch, Issue, NotFound, operation_outcome
from fhir_server.interactions.bundles import bundle, full_url, page_url, resource_json
from fhir_server.interactions.conditional import restricted
from fhir_server.interactions.crud import check_type, entries_of
from fhir_server.interactions.services import Services
from fhir_server.resources.meta import format_instant
from fhir_server.resources.presentation import present
from fhir_server.search.ast import Node, SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.storage.base import SearchPage, StoredVersion, Transaction

CURSOR_PARAM = "_cursor"


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
    page = replace(page, includes=[v for v in page.includes if _may_see(svc, auth, v)])
    path = self_path or (resource_type or "")
    base = f"{svc.base_url}/{path}" if path else svc.base_url
    return _searchset(svc, page, base, params, parsed.issues, summary, elements)


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
    """The query narrowed to what the caller may see, decided before it runs."""
    for resource_type in query.types:
        svc.policy.authorize(auth, Interaction.SEARCH, resource_type)
    for include in query.includes:
        svc.policy.authorize(auth, Interaction.SEARCH, include.target_type or include.source_type)
    if len(query.types) == 1:
        return restricted(query, svc.policy.search_filter(auth, query.types[0]))
    if auth.patient is not None:
        raise InvalidSearch("a patient-context search must name one resource type (use _type)")
    return query


def _may_see(svc: Services, auth: AuthContext, version: StoredVersion) -> bool:
    """Whether an included resource is one the caller could read on its own.

    Includes cannot be restricted inside the query yet: the backends compile
    ``include_where`` for every type at once, and a compartment filter differs
    per type. Checking them here, with the same matcher a read uses, keeps
    read, search and include in agreement; it cannot leak counts or break
    paging, which are decided by the matches alone.
    """
    grants = svc.policy.grants(auth, Interaction.READ, version.resource_type)
    if not grants:
        return False
    where = svc.policy.search_filter(auth, version.resource_type, Interaction.READ)
    return where is None or svc.policy.matches(where, version.id, entries_of(svc, version))


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
    if page.next_cursor is not None:
        links.append(("next", page_url(base, params, **{CURSOR_PARAM: page.next_cursor})))
    if page.previous_cursor is not None:
        links.append(("previous", page_url(base, params, **{CURSOR_PARAM: page.previous_cursor})))
    entries: list[dict[str, Any]] = []
    if summary != "count":
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
