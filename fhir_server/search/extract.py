"""Resource -> index entries, by search parameter type. Pure and backend-neutral.

Each parameter's expression selects elements; the parameter's type says how an
element becomes values (a CodeableConcept gives one token per coding, a Period
one date range, a HumanName one string per part...).
See https://hl7.org/fhir/R4/search.html#ptypes
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.search.dates import date_values
from fhir_server.search.fhirpath import (
    Item,
    evaluate,
    evaluate_relative,
    expression_roots,
    may_select,
    present_elements,
)
from fhir_server.search.packed import PackedIndex, pack_entries
from fhir_server.search.registry import ParamDef, SearchRegistry
from fhir_server.search.values import (
    CompositeValue,
    IndexEntry,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    TokenValue,
    UriValue,
    Value,
    derived_param,
    normalize_text,
    string_value,
)

# ``Patient.deceased.exists() and Patient.deceased != false``: the one boolean
# expression in R4 for our types; evaluated here rather than in general FHIRPath.
_EXISTS_NOT_FALSE = re.compile(r"^(?P<path>\S+)\.exists\(\) and (?P=path) != false$")

# Parts of HumanName and Address a string search matches (R4 search.html#string).
_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
)

# Fields whose elements are ContactPoints: their token is the value, not system|value.
_CONTACT_POINT_FIELDS = frozenset({"telecom", "contact"})


def extract_index(resource: dict[str, Any], registry: SearchRegistry) -> list[IndexEntry]:
    """Every index entry of ``resource`` (``_id``/``_lastUpdated`` come from columns)."""
    return list(dict.fromkeys(_entries(resource, registry)))


def extract_packed(resource: dict[str, Any], registry: SearchRegistry) -> PackedIndex:
    """``extract_index`` packed (``search.packed``), as the worker processes send it.
    Duplicates are dropped as tuples, which hash in C; an entry hashes in Python."""
    return PackedIndex(tuple(dict.fromkeys(pack_entries(_entries(resource, registry)))))


def _entries(resource: dict[str, Any], registry: SearchRegistry) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    present: set[str] | None = None
    base_url = registry.base_url
    for planned in _planned(registry.params_for(resource.get("resourceType", ""))):
        if planned.roots is not None and planned.exists_path is None:
            # most parameters of a type are absent from any one resource: skip
            # them by their top-level elements, without evaluating anything
            if present is None:
                present = present_elements(resource)
            if present.isdisjoint(planned.roots):
                continue
        entries.extend(_extract(resource, planned.param, planned.exists_path, base_url))
    return entries


@dataclass(frozen=True, slots=True)
class _Planned:
    """A parameter with what extraction needs to know of it before evaluating."""

    param: ParamDef
    roots: frozenset[str] | None  # the top-level elements it starts from (None: unknown)
    exists_path: str | None  # for ``X.exists() and X != false`` parameters


class _Plans:
    """The plan of each parameter set, by the set's identity: a registry hands out
    the same mapping for a type every time, and hashing 30 parameter definitions
    per resource would cost what the plan saves. Bounded: test suites build many
    registries."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._held: dict[int, tuple[Mapping[str, ParamDef], tuple[_Planned, ...]]] = {}

    def __call__(self, params: Mapping[str, ParamDef]) -> tuple[_Planned, ...]:
        held = self._held.get(id(params))
        if held is not None and held[0] is params:
            return held[1]
        if len(self._held) >= self._size:
            self._held.clear()
        plan = tuple(_plan(p) for p in params.values() if not p.from_column)
        self._held[id(params)] = (params, plan)  # holding it keeps the id unique
        return plan


def _plan(param: ParamDef) -> _Planned:
    exists = _EXISTS_NOT_FALSE.match(param.expression)
    roots = None if exists else expression_roots(param.expression)
    return _Planned(param, roots, exists["path"] if exists else None)


_planned = _Plans()


def extract_param(
    resource: dict[str, Any], param: ParamDef, base_url: str | None = None
) -> list[IndexEntry]:
    """The index entries of one parameter; references under ``base_url`` become relative."""
    exists = _EXISTS_NOT_FALSE.match(param.expression)
    if exists is None and not may_select(resource, param.expression):
        return []
    return _extract(resource, param, exists["path"] if exists else None, base_url)


def _extract(
    resource: dict[str, Any], param: ParamDef, exists_path: str | None, base_url: str | None
) -> list[IndexEntry]:
    if exists_path is not None:
        items = evaluate(resource, exists_path)
        flag = any(i.value is not False for i in items)
        return [IndexEntry(param.code, TokenValue(None, "true" if flag else "false"))]
    items = evaluate(resource, param.expression)
    if param.type == "composite":
        return [IndexEntry(param.code, v) for v in _composites(items, param)]
    values = values_of(items, param.type)
    if param.type == "reference":
        values = [_local(v, base_url, resource) for v in values]
    entries = [IndexEntry(param.code, v) for v in values]
    entries += _derived(items, param)
    return entries


def _local(value: Value, base_url: str | None, resource: dict[str, Any]) -> Value:
    """A reference as stored: this server's absolute URLs made relative, and a
    contained reference (``#id``) typed by the contained resource it names."""
    if not isinstance(value, ReferenceValue) or value.url is None:
        return value
    if value.url.startswith("#"):
        for contained in resource.get("contained", ()):
            if isinstance(contained, dict) and f"#{contained.get('id')}" == value.url:
                return ReferenceValue(contained.get("resourceType"), None, url=value.url)
        return value
    if base_url and value.url.startswith(base_url + "/"):
        return parse_reference(value.url[len(base_url) + 1 :]) or value
    return value


def values_of(items: list[Item], param_type: str) -> list[Value]:
    """The search values of elements, read as ``param_type``."""
    convert = _CONVERTERS.get(param_type)
    if convert is None:
        return []
    return [v for item in items for v in convert(item)]


def _composites(items: list[Item], param: ParamDef) -> Iterator[CompositeValue]:
    for item in items:
        per_component = [
            values_of(evaluate_relative([item], c.expression), c.type) for c in param.components
        ]
        for combo in itertools.product(*per_component):
            yield CompositeValue(tuple(combo))


def _derived(items: list[Item], param: ParamDef) -> list[IndexEntry]:
    """Entries for modifiers that search something other than the value itself."""
    entries: list[IndexEntry] = []
    for item in items:
        value = item.value
        if not isinstance(value, dict):
            continue
        if param.type == "reference" and isinstance(value.get("identifier"), dict):
            code = derived_param(param.code, "identifier")
            entries += [IndexEntry(code, t) for t in _identifier(value["identifier"])]
        if param.type == "token" and _is_identifier(item):
            code = derived_param(param.code, "of-type")
            entries += [IndexEntry(code, t) for t in _of_type(value)]
    return entries


def _strings(item: Item) -> Iterator[Value]:
    value = item.value
    if isinstance(value, str):
        yield string_value(value)
    elif isinstance(value, dict):
        for key in _STRING_PARTS:
            part = value.get(key)
            for text in part if isinstance(part, list) else [part]:
                if isinstance(text, str):
                    yield string_value(text)


def _is_identifier(item: Item) -> bool:
    value = item.value
    return (
        isinstance(value, dict)
        and "value" in value
        and "coding" not in value
        and item.name not in _CONTACT_POINT_FIELDS
    )


def _tokens(item: Item) -> Iterator[Value]:
    value = item.value
    if isinstance(value, bool):
        yield TokenValue(None, "true" if value else "false")
    elif isinstance(value, str):
        yield TokenValue(None, value)
    elif not isinstance(value, dict):
        return
    elif "coding" in value or ("text" in value and "value" not in value):
        yield from _concept(value)
    elif item.name in _CONTACT_POINT_FIELDS:
        if isinstance(value.get("value"), str):
            yield TokenValue(None, value["value"])
    elif "value" in value:
        yield from _identifier(value)
    elif "code" in value or "system" in value:
        yield _coding(value, None)


def _coding(coding: dict[str, Any], text: str | None) -> TokenValue:
    display = coding.get("display") or text
    return TokenValue(
        coding.get("system"),
        coding.get("code"),
        normalize_text(display) if isinstance(display, str) else None,
    )


def _concept(concept: dict[str, Any]) -> Iterator[TokenValue]:
    text = concept.get("text") if isinstance(concept.get("text"), str) else None
    for coding in concept.get("coding", ()):
        if isinstance(coding, dict):
            yield _coding(coding, text)
    if text is not None:
        yield TokenValue(None, None, normalize_text(text))


def _identifier(identifier: dict[str, Any]) -> Iterator[TokenValue]:
    if isinstance(identifier.get("value"), str):
        type_text = (identifier.get("type") or {}).get("text")
        text = normalize_text(type_text) if isinstance(type_text, str) else None
        yield TokenValue(identifier.get("system"), identifier["value"], text)


def _of_type(identifier: dict[str, Any]) -> Iterator[TokenValue]:
    value = identifier.get("value")
    codings = (identifier.get("type") or {}).get("coding", ())
    if isinstance(value, str):
        for coding in codings:
            if isinstance(coding, dict) and coding.get("code"):
                yield TokenValue(coding.get("system"), coding["code"], value)


def _references(item: Item) -> Iterator[Value]:
    value = item.value
    if isinstance(value, str):  # a canonical
        yield ReferenceValue(None, None, url=value)
    elif isinstance(value, dict) and isinstance(value.get("reference"), str):
        parsed = parse_reference(value["reference"])
        if parsed is not None:
            yield parsed


def parse_reference(text: str) -> ReferenceValue | None:
    """``Type/id[/_history/v]`` as type+id; absolute URLs and ``#id`` kept as url."""
    if text.startswith("#") or ":" in text:
        return ReferenceValue(None, None, url=text)
    parts = text.split("/")
    if len(parts) == 2 and all(parts):
        return ReferenceValue(parts[0], parts[1])
    if len(parts) == 4 and parts[2] == "_history" and all(parts):
        return ReferenceValue(parts[0], parts[1], version=parts[3])
    return None


def _quantities(item: Item) -> Iterator[Value]:
    value = item.value
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        number = float(value["value"])
        yield QuantityValue(
            number, number, number, value.get("system"), value.get("code"), value.get("unit")
        )


def _numbers(item: Item) -> Iterator[Value]:
    value = item.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield NumberValue(float(value), float(value), float(value))


def _uris(item: Item) -> Iterator[Value]:
    if isinstance(item.value, str):
        yield UriValue(item.value)


def _dates(item: Item) -> Iterator[Value]:
    yield from date_values(item.value)


_CONVERTERS: dict[str, Callable[[Item], Iterator[Value]]] = {
    "string": _strings,
    "token": _tokens,
    "date": _dates,
    "reference": _references,
    "quantity": _quantities,
    "number": _numbers,
    "uri": _uris,
}
