"""The CapabilityStatement: built from what the server really does, so it cannot
drift from it. See https://hl7.org/fhir/R4/capabilitystatement.html
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_server.resources.types import SERVER_WRITTEN_TYPES, SUPPORTED_TYPES
from fhir_server.search.registry import SearchRegistry

SOFTWARE_VERSION = "0.1.0"

_READ_INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
_WRITE_INTERACTIONS = ("create", "update", "patch", "delete")


def _resource(registry: SearchRegistry, resource_type: str) -> dict[str, Any]:
    writable = resource_type not in SERVER_WRITTEN_TYPES
    interactions = _READ_INTERACTIONS + (_WRITE_INTERACTIONS if writable else ())
    params = [
        {"name": code, "definition": p.url, "type": p.type}
        for code, p in sorted(registry.params_for(resource_type).items())
    ]
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "full-support",
        "conditionalUpdate": writable,
        "conditionalDelete": "single" if writable else "not-supported",
        "searchParam": params,
    }
    return entry


def _security(oauth: Mapping[str, str]) -> dict[str, Any]:
    security: dict[str, Any] = {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "Bearer JWT access tokens signed by this server (SMART on FHIR scopes).",
    }
    if oauth:
        security["extension"] = [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": k, "valueUri": v} for k, v in oauth.items()],
            }
        ]
    return security


def capability_statement(
    registry: SearchRegistry, base_url: str, published: str, oauth: Mapping[str, str]
) -> dict[str, Any]:
    """The server's CapabilityStatement. ``oauth`` maps SMART endpoint names
    (token, authorize, …) to URLs for those the server offers."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "radhub",
        "kind": "instance",
        "software": {"name": "radhub", "version": SOFTWARE_VERSION},
        "implementation": {"description": "radhub FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": _security(oauth),
                "resource": [_resource(registry, t) for t in sorted(SUPPORTED_TYPES)],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                    {"code": "search-system"},
                ],
            }
        ],
    }
