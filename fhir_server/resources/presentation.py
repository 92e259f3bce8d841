"""``_summary`` and ``_elements``: returning part of a resource, marked SUBSETTED.
See https://hl7.org/fhir/R4/search.html#summary and #elements
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS = ("resourceType", "id", "meta")


@lru_cache(maxsize=64)
def summary_elements(resource_type: str) -> frozenset[str]:
    """The elements the R4 definition marks ``isSummary`` for a type."""
    fields = get_fhir_model_class(resource_type).model_fields
    names: set[str] = set()
    for name, info in fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("summary_element_property"):
            names.add(info.alias or name)
    return frozenset(names)


def _subsetted(resource: dict[str, Any], keep: frozenset[str] | set[str]) -> dict[str, Any]:
    kept = {k: v for k, v in resource.items() if k in keep or k in _ALWAYS}
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
        return _subsetted(resource, summary_elements(resource_type))
    if summary == "text":
        return _subsetted(resource, {"text"})
    if summary == "data":
        return _subsetted(resource, set(resource) - {"text"})
    if elements:
        return _subsetted(resource, set(elements))
    return resource
