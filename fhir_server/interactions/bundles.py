"""Building response Bundles and their entries from stored versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.resources.meta import format_instant
from fhir_server.storage.base import StoredVersion

_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    304: "304 Not Modified",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    415: "415 Unsupported Media Type",
    422: "422 Unprocessable Entity",
    500: "500 Internal Server Error",
}

_HISTORY_METHOD = {"create": "POST", "update": "PUT", "delete": "DELETE"}


def status_text(status: int) -> str:
    return _STATUS_TEXT.get(status, str(status))


def etag(version: StoredVersion) -> str:
    return f'W/"{version.version}"'


def resource_json(version: StoredVersion) -> dict[str, Any] | None:
    if version.body is None:
        return None
    value = orjson.loads(version.body)
    assert isinstance(value, dict)
    return value


def full_url(base_url: str, version: StoredVersion) -> str:
    return f"{base_url}/{version.resource_type}/{version.id}"


def history_entry(base_url: str, version: StoredVersion) -> dict[str, Any]:
    """A history Bundle entry. See https://hl7.org/fhir/R4/http.html#history"""
    method = _HISTORY_METHOD[version.method]
    url = f"{version.resource_type}/{version.id}" if method != "POST" else version.resource_type
    entry: dict[str, Any] = {"fullUrl": full_url(base_url, version)}
    resource = resource_json(version)
    if resource is not None:
        entry["resource"] = resource
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {
        "status": "410 Gone"
        if version.deleted
        else ("201 Created" if method == "POST" else "200 OK"),
        "etag": etag(version),
        "lastModified": format_instant(version.last_updated),
    }
    return entry


def page_url(base: str, params: list[tuple[str, str]], **override: str) -> str:
    """``base`` with ``params`` (minus any overridden names) and the overrides."""
    kept = [(k, v) for k, v in params if k not in override]
    query = urlencode([*kept, *override.items()])
    return f"{base}?{query}" if query else base


def bundle(
    kind: str,
    entries: list[dict[str, Any]],
    *,
    total: int | None = None,
    links: Sequence[tuple[str, str]] = (),
    id: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"resourceType": "Bundle"}
    if id is not None:
        result["id"] = id
    result["type"] = kind
    if timestamp is not None:
        result["timestamp"] = timestamp
    if total is not None:
        result["total"] = total
    if links:
        result["link"] = [{"relation": rel, "url": url} for rel, url in links]
    result["entry"] = entries
    return result
