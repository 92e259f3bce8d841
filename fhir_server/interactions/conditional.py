"""Resolving the search criteria of conditional create, update and delete.

Criteria are parsed strictly: an unknown parameter in a condition would
silently match more than the client meant, so it is a 400, not a warning.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.errors import InvalidSearch
from fhir_server.interactions.services import Services
from fhir_server.search.ast import And, Node, SearchQuery
from fhir_server.search.parse import parse_search
from fhir_server.storage.base import StoredVersion, Transaction


def criteria_params(criteria: str) -> list[tuple[str, str]]:
    params = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
    if not params:
        raise InvalidSearch("conditional criteria must not be empty")
    return params


def restricted(query: SearchQuery, extra: Node | None) -> SearchQuery:
    """``query`` narrowed by ``extra`` (the caller's compartment and scope limits)."""
    if extra is None:
        return query
    where = extra if query.where is None else And((query.where, extra))
    return replace(query, where=where)


async def find_conditional(
    tx: Transaction, svc: Services, auth: AuthContext, resource_type: str, criteria: str
) -> list[StoredVersion]:
    """At most two matches of ``criteria``: enough to tell none, one and several."""
    svc.policy.authorize(auth, Interaction.SEARCH, resource_type)
    parsed = parse_search(resource_type, criteria_params(criteria), svc.registry, strict=True)
    query = replace(parsed.query, count=2, includes=(), sort=(), total="none", cursor=None)
    query = restricted(query, svc.policy.search_filter(auth, resource_type))
    page = await tx.search(query)
    return page.matches
