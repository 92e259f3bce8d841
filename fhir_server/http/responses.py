"""FHIR HTTP responses: JSON bodies, version headers, ``Prefer`` and errors."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.storage.base import StoredVersion

log = logging.getLogger(__name__)

FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"


def fhir_json(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, *, pretty: bool = False
) -> Response:
    option = orjson.OPT_INDENT_2 if pretty else 0
    raw = body if isinstance(body, bytes) else orjson.dumps(body, option=option)
    return Response(raw, status_code=status, headers=headers, media_type=FHIR_JSON_UTF8)


def version_headers(version: StoredVersion) -> dict[str, str]:
    """``ETag`` and ``Last-Modified`` of a version. See https://hl7.org/fhir/R4/http.html#versioning"""
    return {
        "ETag": f'W/"{version.version}"',
        "Last-Modified": http_date(version.last_updated),
    }


@lru_cache(maxsize=4096)
def http_date(moment: datetime) -> str:
    """An HTTP-date (RFC 9110 §5.6.7). Remembered: the same versions are read
    over and over, and formatting one costs more than the rest of its headers."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def location(base_url: str, version: StoredVersion) -> str:
    return f"{base_url}/{version.resource_type}/{version.id}/_history/{version.version}"


def prefer_return(request: Request) -> str:
    """The ``Prefer: return=`` the client asked for (``representation`` by default)."""
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"').lower()
            if value in ("minimal", "representation", "operationoutcome"):
                return value
    return "representation"


def prefer_strict(request: Request) -> bool:
    """``Prefer: handling=strict``. See https://hl7.org/fhir/R4/search.html#errors"""
    for part in request.headers.get("prefer", "").replace(",", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().lower() == "strict":
            return True
    return False


def written(
    request: Request,
    base_url: str,
    status: int,
    version: StoredVersion | None,
    issues: tuple[Issue, ...] = (),
    *,
    created: bool = False,
) -> Response:
    """The response to a create, update or patch, shaped by ``Prefer: return``."""
    headers: dict[str, str] = {}
    if version is not None and version.body is not None:
        headers.update(version_headers(version))
        if created or status == 201:
            headers["Location"] = location(base_url, version)
        else:
            headers["Content-Location"] = location(base_url, version)
    wanted = prefer_return(request)
    if wanted == "minimal" or version is None or version.body is None:
        return Response(status_code=status, headers=headers)
    if wanted == "operationoutcome":
        outcome = operation_outcome(
            issues or (Issue("information", "informational", f"{request.method} succeeded"),)
        )
        return fhir_json(outcome, status, headers)
    return fhir_json(version.body, status, headers)


def error_response(exc: FhirError, *, pretty: bool = False) -> Response:
    return fhir_json(exc.outcome(), exc.status, dict(exc.headers), pretty=pretty)


def unexpected_error_response() -> Response:
    outcome = operation_outcome(
        [Issue("fatal", "exception", "internal server error; the incident was logged")]
    )
    return fhir_json(outcome, 500)
