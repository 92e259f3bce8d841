"""One error hierarchy for the whole server, mapped once at each edge.

Each class carries the HTTP status and the FHIR ``IssueType`` code it stands
for; the FHIR edge renders any of them as an OperationOutcome, the DICOMweb,
DIMSE and HL7 edges map them through their own tables.

    FhirError (500, exception)
    ├── InvalidRequest (400, invalid)
    │   ├── InvalidResource (400, structure)          -- fails R4 validation
    │   ├── InvalidSearch (400, invalid)               -- malformed search value
    │   └── UnprocessableEntity (422, processing)       -- valid JSON, wrong business rule
    ├── Unauthorized (401, login)
    ├── Forbidden (403, forbidden)
    ├── NotFound (404, not-found)
    │   └── UnknownResourceType (404, not-supported)
    ├── MethodNotAllowed (405, not-supported)
    ├── NotAcceptable (406, not-supported)
    ├── Conflict (409, conflict)
    │   └── VersionConflict (409, conflict)            -- a concurrent writer won
    ├── Gone (410, deleted)
    ├── PreconditionFailed (412, conflict)
    │   └── MultipleMatches (412, multiple-matches)
    ├── PayloadTooLarge (413, too-long)
    ├── UnsupportedMediaType (415, not-supported)
    ├── TooManyRequests (429, throttled)
    └── StorageUnavailable (503, transient)

``ResponseBrokenOff`` stands apart: not an answer but the end of one already
begun (``fhir_server.http.broken_off`` honours it at the connection).

See https://hl7.org/fhir/R4/http.html and https://hl7.org/fhir/R4/operationoutcome.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: Severity
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    """An OperationOutcome resource holding ``issues``."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class FhirError(Exception):
    """Base of every error the server reports to a client."""

    diagnostics: str
    issues: tuple[Issue, ...] = field(default=())
    headers: dict[str, str] = field(default_factory=dict)

    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"
    severity: ClassVar[Severity] = "error"

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)

    def __str__(self) -> str:
        return self.diagnostics

    def all_issues(self) -> tuple[Issue, ...]:
        head = Issue(self.severity, self.code, self.diagnostics)
        return (head, *self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.all_issues())


class InvalidRequest(FhirError):
    status = 400
    code = "invalid"


class InvalidResource(InvalidRequest):
    code = "structure"


class InvalidSearch(InvalidRequest):
    code = "invalid"


class UnprocessableEntity(InvalidRequest):
    status = 422
    code = "processing"


class Unauthorized(FhirError):
    status = 401
    code = "login"


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class NotFound(FhirError):
    status = 404
    code = "not-found"


class UnknownResourceType(NotFound):
    code = "not-supported"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class VersionConflict(Conflict):
    pass


class Gone(FhirError):
    status = 410
    code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    code = "conflict"


class MultipleMatches(PreconditionFailed):
    code = "multiple-matches"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-long"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class TooManyRequests(FhirError):
    status = 429
    code = "throttled"


class StorageUnavailable(FhirError):
    status = 503
    code = "transient"


class ResponseBrokenOff(Exception):
    """Raised by an app after its response started, to end the connection before the
    body's end: expected, so logged as one warning (its message), without a traceback."""
