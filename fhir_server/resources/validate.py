"""Validation of incoming resources against the R4 structure definitions, using
fhir.resources' R4B models (identical to R4 for the types radhub serves)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fhir_server.errors import InvalidResource, Issue, UnknownResourceType, UnprocessableEntity
from fhir_server.resources.bindings import binding_issues, model_of
from fhir_server.resources.types import SUPPORTED_TYPES, is_valid_id

_MAX_ISSUES = 20
# Subscription statuses that ask the server to deliver notifications
DELIVERED_STATUSES = frozenset({"requested", "active"})


def _issue(error: Any, resource_type: str) -> Issue:
    path = ".".join(str(part) for part in error["loc"] if part != "__root__")
    expression = f"{resource_type}.{path}" if path else resource_type
    return Issue("error", "structure", f"{expression}: {error['msg']}", (expression,))


def check_type(resource: Any) -> str:
    """The resource's type, if it is a JSON object of a type this server supports."""
    if not isinstance(resource, dict):
        raise InvalidResource("the body is not a JSON object")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("the resource has no resourceType")
    if resource_type not in SUPPORTED_TYPES:
        raise UnknownResourceType(f"resource type {resource_type!r} is not supported")
    return resource_type


def validate_resource(resource: Any) -> str:
    """Validate a resource; return its type or raise InvalidResource with one issue
    per structure error. See https://hl7.org/fhir/R4/validation.html"""
    resource_type = check_type(resource)
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not is_valid_id(rid)):
        raise InvalidResource(f"invalid resource id {rid!r}")
    model: Any = model_of(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        issues = tuple(_issue(e, resource_type) for e in errors[:_MAX_ISSUES])
        raise InvalidResource(
            f"{resource_type} is not valid: {len(errors)} error(s)", issues=issues
        ) from None
    except (ValueError, TypeError) as exc:
        raise InvalidResource(f"{resource_type} is not valid: {exc}") from None
    except RecursionError:
        raise InvalidResource(f"{resource_type} is not valid: nested too deeply") from None
    except KeyError:
        # fhir_core looks a nested resource's model up by its resourceType and
        # raises KeyError for a type it does not know (a contained {"resourceType": ""})
        raise InvalidResource(
            f"{resource_type} is not valid: a nested resource has an unknown resourceType"
        ) from None
    if resource_type == "Subscription" and resource.get("status") in DELIVERED_STATUSES:
        # stored and silently never honoured, it would leave an EHR waiting for reports
        raise UnprocessableEntity(
            "radhub does not send Subscription notifications yet: a Subscription may be "
            "stored with status off or error only"
        )
    wrong_codes = binding_issues(resource, resource_type)
    if wrong_codes:
        raise InvalidResource(
            f"{resource_type} is not valid: {len(wrong_codes)} code(s) outside a required binding",
            issues=tuple(wrong_codes),
        )
    return resource_type
