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


def _conditionals(value: Any, mapping: Mapping[str, str], found: dict[str, None]) -> None:
    """Add to ``found`` the conditional references in ``value``; raise on a
    placeholder no entry defines (it would be stored as a dangling reference)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                if item in mapping:
                    continue
                if item.startswith(URN_UUID):
                    raise InvalidRequest(f"reference {item!r} names no entry of this Bundle")
                if _is_conditional(item):
                    found[item] = None  # a dict: in document order, once each
            else:
                _conditionals(item, mapping, found)
    elif isinstance(value, list):
        for item in value:
            _conditionals(item, mapping, found)


def _replaced(value: Any, mapping: Mapping[str, str], resolved: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: resolved.get(v, mapping.get(v, v))
            if k == "reference" and isinstance(v, str)
            else _replaced(v, mapping, resolved)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_replaced(item, mapping, resolved) for item in value]
    if isinstance(value, str):
        # uri/url/canonical elements may carry a urn:uuid of the Bundle too
        return mapping.get(value, value)
    return value


async def rewrite_references(
    resource: Any, mapping: Mapping[str, str], resolve_conditional: Resolver
) -> Any:
    """A copy of ``resource`` with mapped and conditional references replaced.

    Plain functions walk the resource (twice at most: once to find conditional
    references, once to copy); only the resolution of those awaits. A coroutine
    per element cost a transaction more than its SQL."""
    conditional: dict[str, None] = {}
    _conditionals(resource, mapping, conditional)
    resolved = {ref: await resolve_conditional(ref) for ref in conditional}
    return _replaced(resource, mapping, resolved)
