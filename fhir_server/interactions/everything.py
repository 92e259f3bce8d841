"""``Patient/{id}/$everything``: the patient, every resource in their compartment
and the resources those reference, as a paged ``searchset`` Bundle.

One search over the compartment types (one ``_type`` branch per type, each
served by its reference index), so paging is the ordinary keyset paging and
access control narrows it like any other search.
See https://hl7.org/fhir/R4/patient-operation-everything.html
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.policy import compartment_filter
from fhir_server.access.stored import lookup_in
from fhir_server.errors import Forbidden, InvalidSearch, Issue, NotFound
from fhir_server.interactions.crud import entries_of
from fhir_server.interactions.search import run_query
from fhir_server.interactions.services import Services
from fhir_server.search.ast import And, Compare, Include, Node, Or, SearchQuery
from fhir_server.search.dates import parse_date_range
from fhir_server.search.parse import CURSOR_PARAM, MAX_COUNT
from fhir_server.search.values import TokenValue
from fhir_server.url_integers import url_integer

OPERATION = "$everything"
# R4 defines start/end (care dates) too; radhub does not offer them.
# The access log is in the compartment but not the record: only when ``_type`` names it.
_ONLY_WHEN_NAMED = frozenset({"AuditEvent"})
_PARAMS = frozenset({"_since", "_type", "_count", CURSOR_PARAM})


async def everything(
    svc: Services, auth: AuthContext, patient_id: str, params: list[tuple[str, str]]
) -> dict[str, Any]:
    """Run ``$everything`` for ``Patient/{patient_id}``; 404 if the caller cannot read it."""
    patient = await svc.store.read("Patient", patient_id)
    if patient is None or patient.deleted:
        raise NotFound(f"Patient/{patient_id} is not known")
    await svc.policy.check_stored(
        auth,
        Interaction.READ,
        "Patient",
        patient_id,
        lambda: entries_of(svc, patient),
        lookup_in(svc.store),
    )
    wanted = _types(svc, params)
    # only what the caller may search: a role-capped user sees their part of the record
    candidates = compartment_types(svc, wanted)
    types = tuple(t for t in candidates if svc.policy.grants(auth, Interaction.SEARCH, t))
    hidden = [t for t in candidates if t not in types and wanted is not None]
    if not types:
        raise Forbidden("no resource type of the Patient compartment may be searched")
    where: Node = Or(tuple(_member(svc, t, patient_id) for t in types))
    since = _since(params)
    if since is not None:
        where = And((where, since))
    query = SearchQuery(
        types=types,
        where=where,
        count=_count(svc, params),
        cursor=next((v for n, v in params if n == CURSOR_PARAM), None),
        includes=tuple(Include(t, "*") for t in types),
    )
    issues = [
        Issue("warning", "not-supported", f"Parameter {n!r} of $everything ignored", (n,))
        for n, _ in params
        if n not in _PARAMS
    ]
    issues += [
        Issue("warning", "forbidden", f"_type {t} left out: not granted to this caller", ("_type",))
        for t in hidden
    ]
    path = f"Patient/{patient_id}/{OPERATION}"
    return await run_query(svc, auth, query, path=path, params=params, issues=issues)


def compartment_types(svc: Services, wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    """The supported types that can be in a Patient compartment (``wanted`` of them)."""
    compartment = svc.policy.compartment
    types = tuple(t for t in svc.registry.types if compartment.contains_type(t))
    if wanted is None:
        return tuple(t for t in types if t not in _ONLY_WHEN_NAMED)
    return tuple(t for t in types if t in wanted)


def _member(svc: Services, resource_type: str, patient_id: str) -> Node:
    is_type = Compare("_type", "token", TokenValue(None, resource_type))
    member = compartment_filter(svc.policy.compartment, resource_type, patient_id)
    assert member is not None  # compartment_types keeps only member types
    return And((is_type, member))


def _types(svc: Services, params: list[tuple[str, str]]) -> tuple[str, ...] | None:
    named = [t.strip() for n, v in params if n == "_type" for t in v.split(",") if t.strip()]
    if not named:
        return None
    for t in named:
        if not svc.registry.supports(t) or not svc.policy.compartment.contains_type(t):
            raise InvalidSearch(f"_type names {t!r}, which is not in a Patient compartment")
    return tuple(named)


def _since(params: list[tuple[str, str]]) -> Node | None:
    values = [v for n, v in params if n == "_since"]
    if not values:
        return None
    moment = parse_date_range(values[-1])
    if moment is None or "T" not in values[-1]:
        raise InvalidSearch(f"_since must be an instant, not {values[-1]!r}")
    return Compare("_lastUpdated", "date", replace(moment, high=moment.low + 1), "ge")


def _count(svc: Services, params: list[tuple[str, str]]) -> int:
    values = [v for n, v in params if n == "_count"]
    if not values:
        return svc.limits.default_count
    count = url_integer(values[-1])
    if count is None:
        raise InvalidSearch(f"_count must be a non-negative integer, not {values[-1]!r}")
    return min(count, MAX_COUNT, svc.limits.max_count)
