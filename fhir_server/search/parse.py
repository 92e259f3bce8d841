"""Query parameters -> SearchQuery (expression tree, sort, includes, paging). Pure.

Parameters repeat for AND and take comma-separated values for OR. Unknown or
unsupported parameters are ignored with a warning issue, or rejected when
``strict`` (``Prefer: handling=strict``); malformed values always raise
InvalidSearch. Result-shaping parameters are returned for the caller.
See https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast

from fhir_server.errors import InvalidSearch, Issue
from fhir_server.search.ast import And, Include, Node, SearchQuery, SortKey
from fhir_server.search.parse_params import parse_param
from fhir_server.search.registry import SearchRegistry
from fhir_server.url_integers import url_integer

# Shape the returned Bundle, not the set of matches: left to the caller.
RESULT_PARAMS = frozenset(
    {"_summary", "_elements", "_format", "_pretty", "_contained", "_containedType"}
)
# Defined by R4 but not offered by radhub.
UNSUPPORTED_PARAMS = frozenset({"_text", "_content", "_query", "_filter", "_list"})
TOTAL_MODES = ("none", "estimate", "accurate")
MAX_COUNT = 1000
CURSOR_PARAM = "_cursor"


@dataclass(frozen=True, slots=True)
class ParsedSearch:
    """The query, warnings about ignored parameters, and the result parameters."""

    query: SearchQuery
    issues: tuple[Issue, ...] = ()
    result_params: tuple[tuple[str, str], ...] = ()


@dataclass
class _State:
    types: tuple[str, ...]
    registry: SearchRegistry
    strict: bool
    filters: list[Node] = field(default_factory=list)
    sort: tuple[SortKey, ...] = ()
    includes: list[Include] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    result: list[tuple[str, str]] = field(default_factory=list)
    count: int = 50
    cursor: str | None = None
    total: str = "none"

    def unsupported(self, name: str, why: str) -> None:
        message = f"Search parameter {name!r} ignored: {why}"
        if self.strict:
            raise InvalidSearch(message)
        self.issues.append(Issue("warning", "not-supported", message, (name,)))


def parse_search(
    resource_type: str | None,
    params: list[tuple[str, str]],
    registry: SearchRegistry,
    *,
    strict: bool,
) -> ParsedSearch:
    """Parse type-level (``resource_type``) or system-level (None) search parameters."""
    state = _State(_types(resource_type, params, registry), registry, strict)
    for name, value in params:
        _dispatch(state, name, value)
    where: Node | None = None
    if len(state.filters) == 1:
        where = state.filters[0]
    elif state.filters:
        where = And(tuple(state.filters))
    query = SearchQuery(
        types=state.types,
        where=where,
        sort=state.sort,
        count=state.count,
        cursor=state.cursor,
        total=cast(Literal["none", "estimate", "accurate"], state.total),
        includes=tuple(dict.fromkeys(state.includes)),
    )
    return ParsedSearch(query, tuple(state.issues), tuple(state.result))


def _types(
    resource_type: str | None, params: list[tuple[str, str]], registry: SearchRegistry
) -> tuple[str, ...]:
    if resource_type is not None:
        if not registry.supports(resource_type):
            raise InvalidSearch(f"Resource type {resource_type!r} is not supported")
        return (resource_type,)
    named = [t.strip() for n, v in params if n == "_type" for t in v.split(",") if t.strip()]
    for t in named:
        if not registry.supports(t):
            raise InvalidSearch(f"_type names an unsupported resource type {t!r}")
    return tuple(dict.fromkeys(named)) or registry.types


def _dispatch(state: _State, name: str, value: str) -> None:
    base = name.split(":", 1)[0]
    if name in ("_contained", "_containedType"):
        # Optional in R4; contained resources are never matches here.
        if value not in ("false", "container"):
            state.unsupported(f"{name}={value}", "searching contained resources is not supported")
    elif name in RESULT_PARAMS:
        state.result.append((name, value))
    elif name == "_type":
        pass  # already applied to the types
    elif name == "_count":
        state.count = _count(value)
    elif name == CURSOR_PARAM:
        state.cursor = value
    elif name == "_total":
        if value not in TOTAL_MODES:
            raise InvalidSearch(f"_total must be one of {', '.join(TOTAL_MODES)}")
        state.total = value
    elif name == "_sort":
        state.sort = _sort(state, value)
    elif base in ("_include", "_revinclude"):
        state.includes.extend(_includes(state, name, value))
    elif base in UNSUPPORTED_PARAMS:
        state.unsupported(name, "not supported by this server")
    else:
        _filter(state, name, value)


def _filter(state: _State, name: str, value: str) -> None:
    node = parse_param(name, value, state.types, state.registry)
    if node is None:
        state.unsupported(name, f"not a search parameter of {', '.join(state.types)}")
    else:
        state.filters.append(node)


def _count(value: str) -> int:
    count = url_integer(value)
    if count is None:
        raise InvalidSearch(f"_count must be a non-negative integer, not {value!r}")
    return min(count, MAX_COUNT)


def _sort(state: _State, value: str) -> tuple[SortKey, ...]:
    keys: list[SortKey] = []
    for raw in (v.strip() for v in value.split(",")):
        descending = raw.startswith("-")
        code = raw.lstrip("-")
        param = state.registry.common_param(state.types, code)
        if any(key.param == code for key in keys):
            continue  # a repeated key cannot change the order; SQLite caps the columns
        if code in ("_id", "_lastUpdated"):
            keys.append(SortKey(code, descending))
        elif param is None or param.type == "composite":
            state.unsupported(f"_sort={raw}", "not a sortable parameter")
        else:
            keys.append(SortKey(code, descending))
    return tuple(keys)


def _includes(state: _State, name: str, value: str) -> list[Include]:
    reverse = name.startswith("_revinclude")
    modifier = name.partition(":")[2]
    if modifier not in ("", "iterate", "recurse"):
        raise InvalidSearch(f"Unknown modifier on {name!r}")
    iterate = modifier in ("iterate", "recurse")
    if value == "*":
        return [Include(t, "*", None, iterate, reverse) for t in state.types]
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise InvalidSearch(f"{name} must be Source:param[:Target], not {value!r}")
    source, param, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if not _include_ok(state, source, param, target):
        state.unsupported(f"{name}={value}", "not a reference parameter of a supported type")
        return []
    return [Include(source, param, target, iterate, reverse)]


def _include_ok(state: _State, source: str, param: str, target: str | None) -> bool:
    if not state.registry.supports(source):
        return False
    if target is not None and not state.registry.supports(target):
        return False
    if param == "*":
        return True
    found = state.registry.param(source, param)
    return found is not None and found.type == "reference"
