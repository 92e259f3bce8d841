"""The FHIR REST routes as data: served by ``FhirHttp.routes()`` and described in
the OpenAPI document by ``openapi_paths()``, so the two cannot drift apart.
See https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RouteSpec:
    """One FHIR interaction's URL pattern, method, handler name and summary."""

    path: str
    method: str
    handler: str
    summary: str
    listed: bool = True  # in the OpenAPI document


FHIR_ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("/metadata", "GET", "metadata", "CapabilityStatement (no token needed)"),
    RouteSpec("", "GET", "system_search", "System search"),
    RouteSpec("", "POST", "bundle", "Batch or transaction Bundle"),
    # `/fhir/` as well: a redirect would make some clients drop a POSTed Bundle
    RouteSpec("/", "GET", "system_search", "System search", listed=False),
    RouteSpec("/", "POST", "bundle", "Batch or transaction Bundle", listed=False),
    RouteSpec("/_history", "GET", "system_history", "System history"),
    RouteSpec("/{resource_type}", "GET", "type_search", "Search"),
    RouteSpec("/{resource_type}/_search", "POST", "type_search_post", "Search (POST form)"),
    RouteSpec("/{resource_type}", "POST", "create", "Create (If-None-Exist: conditional)"),
    RouteSpec("/{resource_type}", "PUT", "conditional_update", "Conditional update"),
    RouteSpec("/{resource_type}", "DELETE", "conditional_delete", "Conditional delete"),
    RouteSpec("/{resource_type}/_history", "GET", "type_history", "Type history"),
    RouteSpec("/{resource_type}/{id}", "GET", "read", "Read (conditional with If-None-Match)"),
    RouteSpec("/{resource_type}/{id}", "PUT", "update", "Update (If-Match: version-aware)"),
    RouteSpec("/{resource_type}/{id}", "PATCH", "patch", "Patch (JSON Patch)"),
    RouteSpec("/{resource_type}/{id}", "DELETE", "delete", "Delete"),
    RouteSpec("/{resource_type}/{id}/_history", "GET", "instance_history", "Instance history"),
    RouteSpec("/{resource_type}/{id}/_history/{version_id}", "GET", "vread", "Version read"),
    RouteSpec("/Patient/{id}/$everything", "GET", "patient_everything", "Patient $everything"),
    RouteSpec(
        "/{resource_type}/{id}/{compartment_type}",
        "GET",
        "compartment_search",
        "Patient compartment search",
    ),
)

_PARAM = re.compile(r"{(\w+)}")
_FHIR_JSON = {"application/fhir+json": {"schema": {"type": "object"}}}
_RESPONSES = {
    "default": {"description": "A FHIR resource, Bundle or OperationOutcome", "content": _FHIR_JSON}
}


def _operation(spec: RouteSpec) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": f"fhir_{spec.handler}_{spec.method.lower()}",
        "tags": ["FHIR"],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(spec.path)
        ],
        "responses": _RESPONSES,
    }
    if spec.handler != "metadata":
        operation["security"] = [{"bearer": []}]
    if spec.method in ("POST", "PUT", "PATCH") and spec.handler != "type_search_post":
        media = "application/json-patch+json" if spec.method == "PATCH" else "application/fhir+json"
        operation["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": {"type": "object" if media.endswith("fhir+json") else "array"}}
            },
        }
    return operation


def openapi_paths(prefix: str) -> dict[str, dict[str, Any]]:
    """OpenAPI path items for the listed FHIR routes under ``prefix``."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in FHIR_ROUTES:
        if spec.listed:
            paths.setdefault(prefix + spec.path, {})[spec.method.lower()] = _operation(spec)
    return paths
