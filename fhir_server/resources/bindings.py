"""Required bindings on ``code`` elements: a code outside its value set is refused.

fhir.resources records each bound ``code`` element's codes from the FHIR
definitions (the field's ``enum_values``) but does not check them, so a
Patient with ``gender: "sometimes"`` or a DiagnosticReport with ``status:
"Final"`` passed its validation; a report whose status no search for
``final`` finds is lost to the patient portal. R4 makes these bindings
*required*: only the value set's codes are valid
(https://hl7.org/fhir/R4/terminologies.html#required).

Where a definition lists only its first codes and then ``+`` ("and more"),
``FULL_VALUE_SETS`` holds the whole value set from the R4 pages. An element
whose list is open-ended otherwise (``etc.``) is not checked.

``binding_issues`` walks the JSON the model was built from, guided by a
table per model class (built once), so the check costs a dict look-up per
element present; nested resources (``contained``) are checked by their own type.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from fhir_server.errors import Issue

# https://hl7.org/fhir/R4/valueset-<name>.html for each
FULL_VALUE_SETS: dict[str, frozenset[str]] = {
    "DiagnosticReport.status": frozenset(  # diagnostic-report-status
        "registered partial preliminary final amended corrected appended cancelled "
        "entered-in-error unknown".split()
    ),
    "Observation.status": frozenset(  # observation-status
        "registered preliminary final amended corrected cancelled entered-in-error unknown".split()
    ),
    "Encounter.status": frozenset(  # encounter-status
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error "
        "unknown".split()
    ),
    "DeviceUdiCarrier.entryType": frozenset(  # udi-entry-type
        "barcode rfid manual card self-reported unknown".split()
    ),
}
FULL_VALUE_SETS["EncounterStatusHistory.status"] = FULL_VALUE_SETS["Encounter.status"]
_OPEN = frozenset({"+", "etc."})
MAX_ISSUES = 20

# alias → (the codes of a bound code element, or the model class of a complex one)
_Shape = dict[str, tuple[frozenset[str] | None, type | None]]


def binding_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """One issue per code outside its required binding (at most ``MAX_ISSUES``)."""
    issues: list[Issue] = []
    for where, code, codes in _violations(resource, _shape(model_of(resource_type)), resource_type):
        allowed = ", ".join(sorted(codes))
        issues.append(
            Issue(
                "error",
                "code-invalid",
                f"{where}: {code!r} is not in its required value set ({allowed})",
                (where,),
            )
        )
        if len(issues) == MAX_ISSUES:
            break
    return issues


def _violations(
    data: dict[str, Any], shape: _Shape, path: str
) -> Iterator[tuple[str, str, frozenset[str]]]:
    for key, value in data.items():
        entry = shape.get(key)
        if entry is None:
            continue
        codes, child = entry
        items = value if isinstance(value, list) else (value,)
        for index, item in enumerate(items):
            where = f"{path}.{key}[{index}]" if isinstance(value, list) else f"{path}.{key}"
            if codes is not None:
                if isinstance(item, str) and item not in codes:
                    yield where, item, codes
            elif isinstance(item, dict) and child is not None:
                nested = item.get("resourceType")  # a contained resource: its own type's table
                model = model_of(nested) if isinstance(nested, str) else child
                yield from _violations(item, _shape(model), where)


@lru_cache(maxsize=64)
def model_of(resource_type: str) -> type:
    """The fhir.resources (R4B) model class of a resource type (validation uses it too)."""
    model: type = get_fhir_model_class(resource_type)
    return model


@cache
def _shape(model: Any) -> _Shape:
    """The table of one model class: only elements that are bound or can hold some."""
    shape: _Shape = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        listed = (field.json_schema_extra or {}).get("enum_values")
        if listed:
            codes = FULL_VALUE_SETS.get(f"{model.__name__}.{name}")
            if codes is None and not _OPEN.intersection(listed):
                codes = frozenset(listed)
            if codes is not None:
                shape[alias] = (codes, None)
            continue
        child = _model_class(field.annotation)
        if child is not None:
            shape[alias] = (None, child)
    return shape


def _model_class(annotation: Any) -> type | None:
    """The model class a field's annotation (``Optional[List[abc.HumanNameType]]``) names."""
    if hasattr(annotation, "get_model_klass"):
        found: type = annotation.get_model_klass()
        return found
    for argument in typing.get_args(annotation):
        found_in = _model_class(argument)
        if found_in is not None:
            return found_in
    return None
