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


def _rewrite(
    value: Any, mapping: Mapping[str, str], conditional: dict[str, list[dict[str, Any]]]
) -> None:
    """Replace placeholders in ``value`` in place; note where each conditional
    reference stands (its containing object), to be replaced once resolved."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if key == "reference":
                    if item in mapping:
                        value[key] = mapping[item]
                    elif item.startswith(URN_UUID):
                        # would be stored as a dangling reference
                        raise InvalidRequest(f"reference {item!r} names no entry of this Bundle")
                    elif _is_conditional(item):
                        conditional.setdefault(item, []).append(value)
                elif item in mapping:
                    # uri/url/canonical elements may carry a urn:uuid of the Bundle too
                    value[key] = mapping[item]
            elif isinstance(item, dict | list):
                _rewrite(item, mapping, conditional)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            if isinstance(item, str):
                if item in mapping:
                    value[n] = mapping[item]
            elif isinstance(item, dict | list):
                _rewrite(item, mapping, conditional)


async def rewrite_references(
    resource: Any, mapping: Mapping[str, str], resolve_conditional: Resolver
) -> Any:
    """``resource`` with mapped and conditional references replaced, in place (the
    Bundle's entries are the server's own, parsed from the request).

    One plain walk; only the resolution of conditional references awaits, once
    per distinct reference. A coroutine per element, or a copy of every
    resource, cost a transaction more than its SQL."""
    conditional: dict[str, list[dict[str, Any]]] = {}
    try:
        _rewrite(resource, mapping, conditional)
    except RecursionError:
        raise InvalidRequest("a Bundle entry's resource is nested too deeply") from None
    for reference, holders in conditional.items():
        resolved = await resolve_conditional(reference)
        for holder in holders:
            holder["reference"] = resolved
    return resource
