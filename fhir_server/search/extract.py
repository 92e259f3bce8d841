"""Resource -> index entries, by search parameter type. Pure and backend-neutral.

Each parameter's expression selects elements; the parameter's type says how an
element becomes values (a CodeableConcept gives one token per coding, a Period
one date range, a HumanName one string per part...).
See https://hl7.org/fhir/R4/search.html#ptypes
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from fhir_server.search.packed import (
    COMPOSITE,
    DATE,
    NUMBER,
    QUANTITY,
    REFERENCE,
    STRING,
    TOKEN,
    URI,
    PackedEntry,
    PackedIndex,
    PackedValue,
    unpack_entry,
)
from fhir_server.search.registry import ParamDef, SearchRegistry
from fhir_server.search.values import (
    IndexEntry,
    ReferenceValue,
    derived_param,
    normalize_text,
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
    return [unpack_entry(p) for p in dict.fromkeys(_entries(resource, registry))]


def extract_packed(resource: dict[str, Any], registry: SearchRegistry) -> PackedIndex:
    """``extract_index`` packed (``search.packed``), as the store takes it and the
    worker processes send it. Extraction makes the packed tuples directly, without
    entry and value dataclasses on the way (docs/performance.md, "FHIR core",
    session 9), and drops duplicates as tuples, which hash in C."""
    return PackedIndex(tuple(dict.fromkeys(_entries(resource, registry))))


def _entries(resource: dict[str, Any], registry: SearchRegistry) -> list[PackedEntry]:
    entries: list[PackedEntry] = []
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
    found = _extract(resource, param, exists["path"] if exists else None, base_url)
    return [unpack_entry(p) for p in found]


def _extract(
    resource: dict[str, Any], param: ParamDef, exists_path: str | None, base_url: str | None
) -> list[PackedEntry]:
    code = param.code
    if exists_path is not None:
        items = evaluate(resource, exists_path)
        flag = any(i.value is not False for i in items)
        return [(code, TOKEN, None, "true" if flag else "false", None)]
    items = evaluate(resource, param.expression)
    if param.type == "composite":
        return [(code, COMPOSITE, parts) for parts in _composites(items, param)]
    values = _packed_values(items, param.type)
    if param.type == "reference":
        values = [_local(v, base_url, resource) for v in values]
    entries: list[PackedEntry] = [(code, *v) for v in values]
    if param.type == "reference" or param.type == "token":
        entries += _derived(items, param)
    return entries


def _local(value: PackedValue, base_url: str | None, resource: dict[str, Any]) -> PackedValue:
    """A reference as stored: this server's absolute URLs made relative, and a
    contained reference (``#id``) typed by the contained resource it names."""
    if value[0] != REFERENCE or value[3] is None:
        return value
    url: str = value[3]
    if url.startswith("#"):
        for contained in resource.get("contained", ()):
            if isinstance(contained, dict) and f"#{contained.get('id')}" == url:
                return (REFERENCE, contained.get("resourceType"), None, url, None)
        return value
    if base_url and url.startswith(base_url + "/"):
        return _packed_reference(url[len(base_url) + 1 :]) or value
    return value


def _packed_values(items: list[Item], param_type: str) -> list[PackedValue]:
    convert = _CONVERTERS.get(param_type)
    if convert is None:
        return []
    return [v for item in items for v in convert(item)]


def _composites(items: list[Item], param: ParamDef) -> Iterator[tuple[PackedValue, ...]]:
    for item in items:
        per_component = [
            _packed_values(evaluate_relative([item], c.expression), c.type)
            for c in param.components
        ]
        yield from itertools.product(*per_component)


def _derived(items: list[Item], param: ParamDef) -> list[PackedEntry]:
    """Entries for modifiers that search something other than the value itself."""
    entries: list[PackedEntry] = []
    for item in items:
        value = item.value
        if not isinstance(value, dict):
            continue
        if param.type == "reference" and isinstance(value.get("identifier"), dict):
            code = derived_param(param.code, "identifier")
            entries += [(code, *t) for t in _identifier(value["identifier"])]
        if param.type == "token" and _is_identifier(item):
            code = derived_param(param.code, "of-type")
            entries += [(code, *t) for t in _of_type(value)]
    return entries


def _string(text: str) -> PackedValue:
    return (STRING, normalize_text(text), text)


def _strings(item: Item) -> list[PackedValue]:
    value = item.value
    if isinstance(value, str):
        return [_string(value)]
    found: list[PackedValue] = []
    if isinstance(value, dict):
        for key in _STRING_PARTS:
            part = value.get(key)
            if isinstance(part, str):
                found.append(_string(part))
            elif isinstance(part, list):
                found += [_string(text) for text in part if isinstance(text, str)]
    return found


def _is_identifier(item: Item) -> bool:
    value = item.value
    return (
        isinstance(value, dict)
        and "value" in value
        and "coding" not in value
        and item.name not in _CONTACT_POINT_FIELDS
    )


def _tokens(item: Item) -> Iterator[PackedValue]:
    value = item.value
    if isinstance(value, bool):
        yield (TOKEN, None, "true" if value else "false", None)
    elif isinstance(value, str):
        yield (TOKEN, None, value, None)
    elif not isinstance(value, dict):
        return
    elif "coding" in value or ("text" in value and "value" not in value):
        yield from _concept(value)
    elif item.name in _CONTACT_POINT_FIELDS:
        if isinstance(value.get("value"), str):
            yield (TOKEN, None, value["value"], None)
    elif "value" in value:
        yield from _identifier(value)
    elif "code" in value or "system" in value:
        yield _coding(value, None)


def _coding(coding: dict[str, Any], text: str | None) -> PackedValue:
    display = coding.get("display") or text
    return (
        TOKEN,
        coding.get("system"),
        coding.get("code"),
        normalize_text(display) if isinstance(display, str) else None,
    )


def _concept(concept: dict[str, Any]) -> Iterator[PackedValue]:
    text = concept.get("text") if isinstance(concept.get("text"), str) else None
    for coding in concept.get("coding", ()):
        if isinstance(coding, dict):
            yield _coding(coding, text)
    if text is not None:
        yield (TOKEN, None, None, normalize_text(text))


def _identifier(identifier: dict[str, Any]) -> Iterator[PackedValue]:
    if isinstance(identifier.get("value"), str):
        type_text = (identifier.get("type") or {}).get("text")
        text = normalize_text(type_text) if isinstance(type_text, str) else None
        yield (TOKEN, identifier.get("system"), identifier["value"], text)


def _of_type(identifier: dict[str, Any]) -> Iterator[PackedValue]:
    value = identifier.get("value")
    codings = (identifier.get("type") or {}).get("coding", ())
    if isinstance(value, str):
        for coding in codings:
            if isinstance(coding, dict) and coding.get("code"):
                yield (TOKEN, coding.get("system"), coding["code"], value)


def _references(item: Item) -> Iterator[PackedValue]:
    value = item.value
    if isinstance(value, str):  # a canonical
        yield (REFERENCE, None, None, value, None)
    elif isinstance(value, dict) and isinstance(value.get("reference"), str):
        parsed = _packed_reference(value["reference"])
        if parsed is not None:
            yield parsed


def parse_reference(text: str) -> ReferenceValue | None:
    """``Type/id[/_history/v]`` as type+id; absolute URLs and ``#id`` kept as url."""
    packed = _packed_reference(text)
    return None if packed is None else ReferenceValue(*packed[1:])


def _packed_reference(text: str) -> PackedValue | None:
    if text.startswith("#") or ":" in text:
        return (REFERENCE, None, None, text, None)
    parts = text.split("/")
    if len(parts) == 2 and all(parts):
        return (REFERENCE, parts[0], parts[1], None, None)
    if len(parts) == 4 and parts[2] == "_history" and all(parts):
        return (REFERENCE, parts[0], parts[1], None, parts[3])
    return None


def _quantities(item: Item) -> Iterator[PackedValue]:
    value = item.value
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        number = float(value["value"])
        system, code, unit = value.get("system"), value.get("code"), value.get("unit")
        yield (QUANTITY, number, number, number, system, code, unit)


def _numbers(item: Item) -> Iterator[PackedValue]:
    value = item.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield (NUMBER, float(value), float(value), float(value))


def _uris(item: Item) -> Iterator[PackedValue]:
    if isinstance(item.value, str):
        yield (URI, item.value)


def _dates(item: Item) -> Iterator[PackedValue]:
    for found in date_values(item.value):
        yield (DATE, found.low, found.high)


_CONVERTERS: dict[str, Callable[[Item], Iterable[PackedValue]]] = {
    "string": _strings,
    "token": _tokens,
    "date": _dates,
    "reference": _references,
    "quantity": _quantities,
    "number": _numbers,
    "uri": _uris,
}
