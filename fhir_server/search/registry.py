"""The R4 SearchParameter definitions for the supported types, loaded as data.

The official definitions share one parameter across many resources with a
union expression (``AllergyIntolerance.patient | CarePlan.subject...``); for
each supported type we keep only the ``|`` branches that start with that type
(or with ``Resource``/``DomainResource`` for the common parameters).
See https://hl7.org/fhir/R4/searchparameter.html
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from types import MappingProxyType
from typing import Any, cast

from fhir_server.resources.types import SUPPORTED_TYPES
from fhir_server.search.ast import ParamType

DATA_PACKAGE = "fhir_server"
DEFINITIONS_FILE = ("definitions", "search-parameters-r4.json")

# Served from columns of the resource table, not from index rows.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})

# Defined in R4 but without an expression we can evaluate (full-text, named
# queries, geo); not offered, so they are reported as unsupported.
UNSUPPORTED_TYPES = frozenset({"special"})

DEFAULT_TYPES: tuple[str, ...] = tuple(sorted(SUPPORTED_TYPES))


@dataclass(frozen=True, slots=True)
class ComponentDef:
    """One component of a composite parameter: its type and relative expression."""

    type: ParamType
    expression: str


@dataclass(frozen=True, slots=True)
class ParamDef:
    """A search parameter as it applies to one resource type."""

    code: str
    type: ParamType
    url: str
    expression: str
    targets: tuple[str, ...] = ()
    components: tuple[ComponentDef, ...] = ()
    comparators: tuple[str, ...] = ()

    @property
    def from_column(self) -> bool:
        return self.code in COLUMN_PARAMS


def split_union(expression: str) -> list[str]:
    """The top-level ``|`` branches of a FHIRPath expression."""
    branches: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(expression):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            branches.append(expression[start:i].strip())
            start = i + 1
    branches.append(expression[start:].strip())
    return [b for b in branches if b]


def branch_type(branch: str) -> str:
    """The resource type a branch starts with, allowing leading parentheses."""
    head = branch.lstrip("(")
    end = len(head)
    for i, ch in enumerate(head):
        if not ch.isalnum():
            end = i
            break
    return head[:end]


def branches_for(expression: str, resource_type: str) -> list[str]:
    """The branches of ``expression`` that apply to ``resource_type``."""
    wanted = {resource_type, "Resource", "DomainResource"}
    return [b for b in split_union(expression) if branch_type(b) in wanted]


@dataclass(frozen=True)
class SearchRegistry:
    """Immutable lookup of parameters by resource type and code.

    ``base_url`` is this server's FHIR base: references written as absolute
    URLs under it are local references (extracted and searched as ``Type/id``).
    See https://hl7.org/fhir/R4/references.html#literal
    """

    by_type: Mapping[str, Mapping[str, ParamDef]]
    base_url: str | None = None

    @classmethod
    def load(cls, types: Iterable[str] = DEFAULT_TYPES) -> SearchRegistry:
        """Load the packaged R4 definitions for ``types``."""
        folder, name = DEFINITIONS_FILE
        text = resources.files(DATA_PACKAGE).joinpath(folder).joinpath(name).read_text("utf-8")
        return cls.from_definitions(cast(list[dict[str, Any]], json.loads(text)), types)

    @classmethod
    def from_definitions(
        cls, definitions: list[dict[str, Any]], types: Iterable[str]
    ) -> SearchRegistry:
        """Build from SearchParameter JSON objects (as in the R4 bundle)."""
        types_by_url = {d["url"]: cast(ParamType, d["type"]) for d in definitions}
        by_type: dict[str, Mapping[str, ParamDef]] = {}
        for resource_type in sorted(set(types)):
            params = _params_of(definitions, resource_type, types_by_url)
            by_type[resource_type] = MappingProxyType(params)
        return cls(MappingProxyType(by_type))

    def with_base_url(self, base_url: str | None) -> SearchRegistry:
        """The same definitions, knowing the server's FHIR base URL."""
        return replace(self, base_url=base_url.rstrip("/") if base_url else None)

    def local_reference(self, text: str) -> str:
        """``text`` with this server's base URL (and the slash after it) removed."""
        base = self.base_url
        if base and text.startswith(base + "/"):
            return text[len(base) + 1 :]
        return text

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.by_type)

    def supports(self, resource_type: str) -> bool:
        return resource_type in self.by_type

    def param(self, resource_type: str, code: str) -> ParamDef | None:
        """The parameter ``code`` of ``resource_type``, or None if not defined."""
        return self.by_type.get(resource_type, {}).get(code)

    def params_for(self, resource_type: str) -> Mapping[str, ParamDef]:
        """Every supported parameter of ``resource_type`` by code."""
        return self.by_type.get(resource_type, MappingProxyType({}))

    def common_param(self, types: Iterable[str], code: str) -> ParamDef | None:
        """``code`` if every one of ``types`` defines it with the same type."""
        found = [self.param(t, code) for t in types]
        if not found or any(p is None for p in found):
            return None
        first = cast(ParamDef, found[0])
        same = all(p is not None and p.type == first.type for p in found)
        return first if same else None


def _params_of(
    definitions: list[dict[str, Any]], resource_type: str, types_by_url: Mapping[str, ParamType]
) -> dict[str, ParamDef]:
    params: dict[str, ParamDef] = {}
    for d in definitions:
        base = set(d.get("base", ()))
        if not base & {resource_type, "Resource", "DomainResource"}:
            continue
        param = _param_def(d, resource_type, types_by_url)
        if param is not None:
            params[param.code] = param
    return params


def _param_def(
    d: dict[str, Any], resource_type: str, types_by_url: Mapping[str, ParamType]
) -> ParamDef | None:
    if d["type"] in UNSUPPORTED_TYPES or "expression" not in d:
        return None
    branches = branches_for(d["expression"], resource_type)
    if not branches:
        return None
    components = tuple(
        ComponentDef(types_by_url[c["definition"]], c["expression"])
        for c in d.get("component", ())
        if c["definition"] in types_by_url
    )
    return ParamDef(
        code=d["code"],
        type=cast(ParamType, d["type"]),
        url=d["url"],
        expression=" | ".join(branches),
        targets=tuple(d.get("target", ())),
        components=components,
        comparators=tuple(d.get("comparator", ())),
    )
