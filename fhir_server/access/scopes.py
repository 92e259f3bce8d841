"""SMART scopes parsed into a typed permission set.

Accepted forms (SMART App Launch 2.0, "Scopes and Launch Context"):

- v2 resource scopes ``<context>/<Type|*>.<cruds subset, in order>``, e.g.
  ``patient/Observation.rs``, ``user/*.cruds``, ``system/*.r``;
- v2 granular scopes with a query constraint,
  ``patient/Observation.rs?category=http://...|laboratory``, kept as
  ``(param, value)`` pairs: the policy must turn them into a filter or refuse;
- v1 resource scopes ``<context>/<Type|*>.<read|write|*>`` (no constraints);
- non-resource scopes (``openid``, ``fhirUser``, ``launch``...), kept aside.

A string that fits none of these is ignored with a reason, never fatal: a
token grants what it validly names and nothing more.
See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from fhir_server.access.context import Interaction, Permission

Level = Literal["patient", "user", "system"]
Constraint = tuple[str, str]

# SMART v2: permission letters appear in this order, each at most once.
_ORDER: tuple[Permission, ...] = ("c", "r", "u", "d", "s")

# SMART v1 permission names and what they mean in v2 letters.
_V1: dict[str, frozenset[Permission]] = {
    "read": frozenset({"r", "s"}),
    "write": frozenset({"c", "u", "d"}),
    "*": frozenset(_ORDER),
}

# Scopes that carry no resource permission but matter to the authorisation
# server (launch context, identity, refresh tokens).
NON_RESOURCE_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

_RESOURCE_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]*)"
    r"\.(?P<perm>[a-z*]+)(?:\?(?P<query>.*))?"
)


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One granted resource scope. ``resource_type`` is ``"*"`` for every type."""

    level: Level
    resource_type: str
    permissions: frozenset[Permission]
    constraints: tuple[Constraint, ...] = ()
    source: str = ""

    def covers(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)

    def names(self, resource_type: str) -> bool:
        """Whether the scope names this type explicitly (not through ``*``)."""
        return self.resource_type == resource_type

    def grants(self, resource_type: str, action: Interaction | Permission) -> bool:
        return self.covers(resource_type) and required(action) <= self.permissions


@dataclass(frozen=True, slots=True)
class RejectedScope:
    """A scope string that was ignored, and why."""

    scope: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """Everything a token's ``scope`` grants."""

    resources: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = frozenset()
    rejected: tuple[RejectedScope, ...] = ()

    @classmethod
    def parse(cls, scope: str | None) -> ScopeSet:
        """Parse a space-separated ``scope`` value; bad entries land in ``rejected``."""
        resources: list[ResourceScope] = []
        other: set[str] = set()
        rejected: list[RejectedScope] = []
        for item in (scope or "").split():
            parsed = parse_scope(item)
            if isinstance(parsed, ResourceScope):
                resources.append(parsed)
            elif isinstance(parsed, RejectedScope):
                rejected.append(parsed)
            else:
                other.add(parsed)
        return cls(tuple(resources), frozenset(other), tuple(rejected))

    def allows(self, resource_type: str, action: Interaction | Permission) -> bool:
        """Whether some scope grants ``action`` on ``resource_type`` (constraints aside)."""
        return any(s.grants(resource_type, action) for s in self.resources)

    def granting(
        self, resource_type: str, action: Interaction | Permission
    ) -> tuple[ResourceScope, ...]:
        """The scopes that grant ``action`` on ``resource_type``, with their constraints."""
        return tuple(s for s in self.resources if s.grants(resource_type, action))

    def __str__(self) -> str:
        return " ".join([*(s.source for s in self.resources), *sorted(self.other)])


def required(action: Interaction | Permission) -> frozenset[Permission]:
    """The permission letters ``action`` needs."""
    if isinstance(action, Interaction):
        return action.permissions
    return frozenset({action})


def parse_scope(item: str) -> ResourceScope | RejectedScope | str:
    """One scope string: a resource scope, a rejection, or a non-resource scope name."""
    if item in NON_RESOURCE_SCOPES:
        return item
    match = _RESOURCE_SCOPE.fullmatch(item)
    if match is None:
        return RejectedScope(item, "not a SMART scope")
    perm, query = match["perm"], match["query"]
    permissions = _V1.get(perm) if query is None else None
    if permissions is None:
        permissions_or_reason = _v2_permissions(perm)
        if isinstance(permissions_or_reason, str):
            return RejectedScope(item, permissions_or_reason)
        permissions = permissions_or_reason
    constraints = _constraints(query) if query is not None else ()
    if isinstance(constraints, str):
        return RejectedScope(item, constraints)
    level: Level = match["level"]  # type: ignore[assignment]  # the regex only allows these
    return ResourceScope(level, match["type"], permissions, constraints, item)


def _v2_permissions(perm: str) -> frozenset[Permission] | str:
    if perm in _V1:
        return f"v1 permission {perm!r} cannot take a query constraint"
    letters = [c for c in _ORDER if c in perm]
    if "".join(letters) != perm:
        return f"permissions {perm!r} are not a subset of 'cruds' in that order"
    return frozenset(letters)


def _constraints(query: str) -> tuple[Constraint, ...] | str:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return "malformed query constraint"
    if not pairs or any(not name or not value for name, value in pairs):
        return "empty query constraint"
    return tuple(pairs)
