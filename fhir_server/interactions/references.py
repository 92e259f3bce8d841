"""Rewriting references inside a resource: ``urn:uuid:`` placeholders and
conditional references (``Patient?identifier=x|1``) of a transaction.
See https://hl7.org/fhir/R4/http.html#trules
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fhir_server.errors import InvalidRequest
from fhir_server.resources.types import SUPPORTED_TYPES

Resolver = Callable[[str], Awaitable[str]]

URN_UUID = "urn:uuid:"


def _is_conditional(reference: str) -> bool:
    resource_type, sep, criteria = reference.partition("?")
    return bool(sep) and bool(criteria) and resource_type in SUPPORTED_TYPES


async def _rewrite_value(value: Any, mapping: Mapping[str, str], resolve: Resolver) -> Any:
    if isinstance(value, dict):
        return {k: await _rewrite_field(k, v, mapping, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [await _rewrite_value(item, mapping, resolve) for item in value]
    if isinstance(value, str) and value in mapping:
        # uri/url/canonical elements may carry a urn:uuid of the Bundle too
        return mapping[value]
    return value


async def _rewrite_field(
    key: str, value: Any, mapping: Mapping[str, str], resolve: Resolver
) -> Any:
    if key == "reference" and isinstance(value, str):
        if value in mapping:
            return mapping[value]
        if value.startswith(URN_UUID):
            # a placeholder no entry defines would be stored as a dangling reference
            raise InvalidRequest(f"reference {value!r} names no entry of this Bundle")
        if _is_conditional(value):
            return await resolve(value)
        return value
    return await _rewrite_value(value, mapping, resolve)


async def rewrite_references(
    resource: Any, mapping: Mapping[str, str], resolve_conditional: Resolver
) -> Any:
    """A copy of ``resource`` with mapped and conditional references replaced."""
    return await _rewrite_value(resource, mapping, resolve_conditional)
