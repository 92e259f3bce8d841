"""``_summary`` and ``_elements``: returning part of a resource, marked SUBSETTED.
See https://hl7.org/fhir/R4/search.html#summary and #elements
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_args

from fhir.resources.R4B import get_fhir_model_class

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True, slots=True)
class _Element:
    summary: bool
    required: bool
    backbone: str | None  # the model of a nested BackboneElement, filtered in turn


@lru_cache(maxsize=256)
def _elements_of(model_name: str) -> dict[str, _Element]:
    """The elements of a resource or backbone element model, as the R4 definition flags them."""
    found: dict[str, _Element] = {}
    for name, info in get_fhir_model_class(model_name).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        optional = type(None) in get_args(info.annotation)
        found[info.alias or name] = _Element(
            summary=bool(extra.get("summary_element_property")),
            required=bool(extra.get("element_required")) or not optional,
            backbone=_backbone(info.annotation),
        )
    return found


def _backbone(annotation: Any) -> str | None:
    for arg in (annotation, *get_args(annotation)):
        for inner in (arg, *get_args(arg)):
            name = getattr(inner, "__name__", "")
            if name.endswith("Type") and name[:-4] not in _DATATYPES:
                try:
                    model = get_fhir_model_class(name[:-4])
                except (KeyError, ValueError):
                    continue
                if "BackboneElement" in {c.__name__ for c in model.__mro__}:
                    return name[:-4]
    return None


# Datatypes are returned whole: only resources and their backbone elements are filtered.
_DATATYPES = frozenset({"Reference", "CodeableConcept", "Coding", "Identifier", "Period"})


def summary_elements(resource_type: str) -> frozenset[str]:
    """The top-level elements the R4 definition marks ``isSummary`` for a type."""
    return frozenset(k for k, e in _elements_of(resource_type).items() if e.summary)


def _summary_of(value: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Only the ``isSummary`` elements, recursively through backbone elements."""
    elements = _elements_of(model_name)
    kept: dict[str, Any] = {}
    for key, item in value.items():
        # ``_birthDate`` (a primitive's id and extensions) goes with ``birthDate``
        element = elements.get(key[1:] if key.startswith("_") else key)
        if element is None or not element.summary:
            continue
        if element.backbone is None:
            kept[key] = item
        elif isinstance(item, list):
            kept[key] = [
                _summary_of(i, element.backbone) if isinstance(i, dict) else i for i in item
            ]
        elif isinstance(item, dict):
            kept[key] = _summary_of(item, element.backbone)
        else:
            kept[key] = item
    return kept


def _mandatory(resource_type: str) -> frozenset[str]:
    """The top-level elements with a minimum cardinality of 1."""
    return frozenset(k for k, e in _elements_of(resource_type).items() if e.required)


def _subsetted(resource: dict[str, Any], keep: frozenset[str] | set[str]) -> dict[str, Any]:
    return _tagged({k: v for k, v in resource.items() if k in keep or k in _ALWAYS})


def _tagged(kept: dict[str, Any]) -> dict[str, Any]:
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


def present(
    resource: dict[str, Any], *, summary: str | None = None, elements: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The resource as ``_summary`` / ``_elements`` ask for (unchanged if neither)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type == "OperationOutcome":
        return resource
    if summary == "true":
        kept = _summary_of(resource, resource_type)
        kept.update((k, resource[k]) for k in _ALWAYS if k in resource)
        return _tagged({k: kept[k] for k in resource if k in kept})
    if summary == "text":
        return _subsetted(resource, {"text", *_mandatory(resource_type)})
    if summary == "data":
        return _subsetted(resource, set(resource) - {"text"})
    if elements:
        return _subsetted(resource, set(elements))
    return resource
