"""History at instance, type and system level, with ``_since``, ``_at``, ``_count``
and keyset paging. See https://hl7.org/fhir/R4/http.html#history
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.stored import lookup_in
from fhir_server.errors import Forbidden, InvalidRequest, NotFound
from fhir_server.interactions.bundles import bundle, history_entry, page_url
from fhir_server.interactions.crud import check_type, entries_of
from fhir_server.interactions.services import Services
from fhir_server.resources.meta import format_instant
from fhir_server.resources.types import SUPPORTED_TYPES
from fhir_server.search.dates import from_micros, parse_date_range
from fhir_server.storage.base import HistoryQuery, StoredVersion
from fhir_server.url_integers import url_integer

CURSOR_PARAM = "_cursor"
_KNOWN = {"_since", "_at", "_count", CURSOR_PARAM, "_format", "_pretty"}


def _one(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given once")
    return values[0] if values else None


def _int_param(params: list[tuple[str, str]], name: str) -> int | None:
    text = _one(params, name)
    if text is None:
        return None
    value = url_integer(text)
    if value is None:
        raise InvalidRequest(f"{name} must be a non-negative integer, not {text!r}")
    return value


def _moment(params: list[tuple[str, str]], name: str) -> datetime | None:
    text = _one(params, name)
    if text is None:
        return None
    span = parse_date_range(text)
    if span is None:
        raise InvalidRequest(f"{name}: {text!r} is not a FHIR date or dateTime")
    return from_micros(span.low)


def history_query(
    svc: Services, resource_type: str | None, id: str | None, params: list[tuple[str, str]]
) -> HistoryQuery:
    unknown = sorted({k for k, _ in params} - _KNOWN)
    if unknown:
        raise InvalidRequest(f"unsupported history parameter(s): {', '.join(unknown)}")
    count = _int_param(params, "_count")
    count = svc.limits.default_count if count is None else min(count, svc.limits.max_count)
    return HistoryQuery(
        resource_type=resource_type,
        id=id,
        since=_moment(params, "_since"),
        at=_moment(params, "_at"),
        count=count,
        before_seq=_int_param(params, CURSOR_PARAM),
    )


async def history(
    svc: Services,
    auth: AuthContext,
    resource_type: str | None,
    id: str | None,
    params: list[tuple[str, str]],
) -> dict[str, Any]:
    """The history Bundle for an instance, a type (``id`` None) or the system (both None)."""
    restricted = await _authorize(svc, auth, resource_type, id)
    query = history_query(svc, resource_type, id, params)
    page = await svc.store.history(query)
    versions, total = page.versions, page.total
    if restricted and resource_type is not None:
        # each version is judged by its own content, as vread judges it (an
        # unreleased first version of a final report stays hidden); the total
        # would count the hidden ones, so it is left out
        versions = [v for v in versions if await _may_see(svc, auth, resource_type, v)]
        total = None
    if (
        id is not None
        and resource_type is not None
        and not page.versions
        and query.before_seq is None
    ):
        if await svc.store.read(resource_type, id) is None:
            raise NotFound(f"{resource_type}/{id} is not known")
    path = "/".join(p for p in (resource_type, id) if p)
    base = f"{svc.base_url}/{path}/_history" if path else f"{svc.base_url}/_history"
    links = [("self", page_url(base, params))]
    if page.next_before_seq is not None:
        links.append(("next", page_url(base, params, **{CURSOR_PARAM: str(page.next_before_seq)})))
    entries = [history_entry(svc.base_url, version) for version in versions]
    return bundle(
        "history", entries, total=total, links=links, timestamp=format_instant(svc.clock())
    )


async def _may_see(
    svc: Services, auth: AuthContext, resource_type: str, version: StoredVersion
) -> bool:
    try:
        await svc.policy.check_stored(
            auth,
            Interaction.VREAD,
            resource_type,
            version.id,
            lambda: entries_of(svc, version),
            lookup_in(svc.store),
        )
    except NotFound:
        return False
    return True


async def _authorize(
    svc: Services, auth: AuthContext, resource_type: str | None, id: str | None
) -> bool:
    """Raise unless the caller may read this history; whether its versions must
    each be checked (a restricted caller's instance history)."""
    # History has no search index to filter in: a caller restricted on a type
    # (patient context, a role's own record or own patients, a granular scope)
    # reads the history of single resources it may read, never of a whole type.
    if resource_type is None:
        for each_type in sorted(SUPPORTED_TYPES):
            if svc.policy.search_filter(auth, each_type, Interaction.HISTORY) is not None:
                raise _single_only()
        return False
    check_type(resource_type)
    action = Interaction.HISTORY if id is None else Interaction.HISTORY_INSTANCE
    if svc.policy.search_filter(auth, resource_type, action) is None:
        return False
    if id is None:
        raise _single_only()
    current = await svc.store.read(resource_type, id)
    if current is not None and current.deleted:
        previous = await svc.store.vread(resource_type, id, current.version - 1)
        current = previous or current
    if current is not None:
        version = current
        await svc.policy.check_stored(
            auth,
            action,
            resource_type,
            id,
            lambda: entries_of(svc, version),
            lookup_in(svc.store),
        )
    return True


def _single_only() -> Forbidden:
    return Forbidden("restricted tokens may read the history of single resources only")
