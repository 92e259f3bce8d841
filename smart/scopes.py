"""Scope arithmetic for the authorisation server: what a client may ask, what a
user's roles let it grant, and whether one scope set lies within another.

Scopes are compared in the kernel's parsed form (``fhir_server.access``), so
``user/Observation.rs`` lies within ``user/*.cruds`` and a v1 ``.read``
within the v2 ``.rs``; a granular scope lies within the same scope without
its constraint, never the other way round.
See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

from collections.abc import Iterable

from fhir_server.access import RejectedScope, ResourceScope, parse_scope
from fhir_server.access.roles import ROLES


def split(scope: str | None) -> list[str]:
    """A scope string's items, in order, without duplicates."""
    return list(dict.fromkeys((scope or "").split()))


def covers(outer: str, inner: str) -> bool:
    """Whether granting ``outer`` already grants everything ``inner`` asks."""
    if outer == inner:
        return True
    big, small = parse_scope(outer), parse_scope(inner)
    if not isinstance(big, ResourceScope) or not isinstance(small, ResourceScope):
        return False
    if big.level != small.level or big.resource_type not in ("*", small.resource_type):
        return False
    if not small.permissions <= big.permissions:
        return False
    return not big.constraints or big.constraints == small.constraints


def within(item: str, allowed: Iterable[str]) -> bool:
    """Whether ``item`` is covered by one of ``allowed``."""
    return any(covers(a, item) for a in allowed)


def cap_to_client(requested: Iterable[str], client_scope: str) -> list[str]:
    """The requested scopes a client's registration allows ("" allows any)."""
    allowed = split(client_scope)
    if not allowed:
        return [s for s in requested if not isinstance(parse_scope(s), RejectedScope)]
    return [s for s in requested if within(s, allowed)]


def cap_to_roles(requested: Iterable[str], roles: Iterable[str]) -> list[str]:
    """Drop user/patient scopes on a type none of the user's roles may touch at all.

    Finer limits (which letters, which records) are enforced on every request
    by the access policy; this only keeps the grant honest about the obvious.
    """
    role_list = [ROLES[r] for r in roles if r in ROLES]
    kept: list[str] = []
    for item in requested:
        parsed = parse_scope(item)
        if isinstance(parsed, ResourceScope) and parsed.level == "system":
            continue  # users never get system scopes
        if isinstance(parsed, ResourceScope) and parsed.resource_type != "*":
            rules = [r.rule(parsed.resource_type) for r in role_list]
            if not any(rule and rule.permissions & parsed.permissions for rule in rules):
                continue
        kept.append(item)
    return kept


def only_system(requested: Iterable[str]) -> list[str]:
    """The ``system/`` resource scopes among ``requested`` (backend services)."""
    return [
        s
        for s in requested
        if isinstance(p := parse_scope(s), ResourceScope) and p.level == "system"
    ]


def has_resource_scope(items: Iterable[str]) -> bool:
    return any(isinstance(parse_scope(s), ResourceScope) for s in items)
