"""The backend-neutral search expression tree.

The parser builds it from a query string; each storage adapter compiles it to
its own query language; ``match.py`` evaluates it over index entries as the
test oracle. Access control adds a compartment filter to it before compiling.
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fhir_server.search.values import Value

ParamType = Literal[
    "string", "token", "date", "reference", "number", "quantity", "uri", "composite", "special"
]
Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One value condition on one parameter: ``param[:modifier]=[prefix]value``."""

    param: str
    type: ParamType
    value: Value
    prefix: Prefix = "eq"
    modifier: str | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    """``param:missing=true|false``."""

    param: str
    missing: bool


@dataclass(frozen=True, slots=True)
class Composite:
    """``param=a$b``: one group of the composite ``param`` matches every part.

    ``parts[i].param`` is ``f"{param}${i}"``, the name the extractor gives the
    i-th component of each group, so backends match parts within one group.
    """

    param: str
    parts: tuple[Compare, ...]


@dataclass(frozen=True, slots=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Node


@dataclass(frozen=True, slots=True)
class Chain:
    """``param:Target.rest=value``: the reference ``param`` points at a ``target_type``
    resource that matches ``where``."""

    param: str
    target_type: str
    where: Node


@dataclass(frozen=True, slots=True)
class Has:
    """``_has:Source:param:rest=value``: some ``source_type`` resource whose reference
    ``param`` points at this resource matches ``where``."""

    source_type: str
    param: str
    where: Node


Node = Compare | Missing | Composite | And | Or | Not | Chain | Has


@dataclass(frozen=True, slots=True)
class SortKey:
    param: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=Source:param[:Target]`` or, with ``reverse``, ``_revinclude``."""

    source_type: str
    param: str
    target_type: str | None = None
    iterate: bool = False
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A compiled-ready search: what matches, in what order, which page."""

    types: tuple[str, ...]
    where: Node | None = None
    sort: tuple[SortKey, ...] = ()
    count: int = 50
    cursor: str | None = None
    total: Literal["none", "estimate", "accurate"] = "none"
    includes: tuple[Include, ...] = field(default=())
    # Access control: included resources must also match this (e.g. a compartment).
    include_where: Node | None = None
