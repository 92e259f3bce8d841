"""The resource types radhub serves, and the rules for logical ids."""

from __future__ import annotations

import re

SUPPORTED_TYPES: frozenset[str] = frozenset(
    {
        "Patient",
        "ServiceRequest",
        "Appointment",
        "ImagingStudy",
        "DiagnosticReport",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Encounter",
        "Observation",
        "Procedure",
        "Endpoint",
        "Device",
        "Schedule",
        "Slot",
        "AuditEvent",
        "Provenance",
        "Subscription",
        "Binary",
        "DocumentReference",
    }
)

# AuditEvent is written by the server only: the audit trail is append-only.
SERVER_WRITTEN_TYPES: frozenset[str] = frozenset({"AuditEvent"})

# https://hl7.org/fhir/R4/datatypes.html#id
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None
