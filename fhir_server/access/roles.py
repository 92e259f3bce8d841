"""User roles and what each may do: the role × resource × action table, as data.

A role caps what a ``user/`` (or ``patient/``) scope grants to a user who
holds it: the scope and the role must both allow an interaction, and the
role's restriction (own record only, a status constraint) is added to the
search filter like a granular scope's. ``system/`` scopes (backend services,
no user) are not capped. A token without a ``roles`` claim is not capped
either: only the local admin tool (``radhub token``) mints those; every token
the authorisation server issues to a user carries the user's roles.

Several roles: the union of what each allows.
The table is documented in README.md ("Roles"); keep the two in step.

A referrer (referring physician) reads only *their own patients'* records:
a Patient is theirs when a ServiceRequest names their ``fhirUser``
Practitioner as ``requester`` and that Patient as ``subject`` (an order is
how a patient comes to a radiology department), or when the Patient names
that Practitioner as ``generalPractitioner``. ``fhir_server.access.referrer``
builds that rule as a search filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fhir_server.access.context import Interaction, Permission
from fhir_server.access.scopes import Constraint

ALL = "*"

# Report and result statuses a patient (and a referrer) may see: released ones.
# See https://hl7.org/fhir/R4/valueset-diagnostic-report-status.html
RELEASED: tuple[Constraint, ...] = (("status", "final,amended,corrected,appended"),)

# Directory and reference data every clinical role reads.
_DIRECTORY = ("Practitioner", "PractitionerRole", "Organization", "Location", "Endpoint", "Device")


@dataclass(frozen=True, slots=True)
class RoleRule:
    """What a role may do on one resource type, and under which constraint."""

    permissions: frozenset[Permission]
    constraints: tuple[Constraint, ...] = ()


@dataclass(frozen=True, slots=True)
class Role:
    """A role's rules by resource type (``*`` for any type not listed).

    ``own_record_only``: every compartment resource is restricted to the
    user's own Patient compartment (the ``fhirUser`` Patient).
    ``own_patients_only``: every compartment resource is restricted to the
    compartments of the ``fhirUser`` Practitioner's own patients (see the
    module docstring and ``fhir_server.access.referrer``).
    """

    name: str
    rules: Mapping[str, RoleRule]
    own_record_only: bool = False
    own_patients_only: bool = False

    def rule(self, resource_type: str) -> RoleRule | None:
        return self.rules.get(resource_type) or self.rules.get(ALL)

    def allows(self, resource_type: str, action: Interaction) -> RoleRule | None:
        """The rule that allows ``action`` on ``resource_type``, or None."""
        rule = self.rule(resource_type)
        return rule if rule is not None and action.permissions <= rule.permissions else None


def _role(
    name: str,
    table: Mapping[str, str | tuple[str, tuple[Constraint, ...]]],
    own: bool = False,
    own_patients: bool = False,
) -> Role:
    rules: dict[str, RoleRule] = {}
    for resource_type, spec in table.items():
        letters, constraints = (spec, ()) if isinstance(spec, str) else spec
        rules[resource_type] = RoleRule(_letters(letters), constraints)
    return Role(name, MappingProxyType(rules), own, own_patients)


def _letters(text: str) -> frozenset[Permission]:
    allowed: tuple[Permission, ...] = ("c", "r", "u", "d", "s")
    return frozenset(p for p in allowed if p in text)


def _directory(letters: str) -> dict[str, str]:
    return dict.fromkeys(_DIRECTORY, letters)


# The table (README.md, "Roles"). Letters are SMART v2 permissions: c create,
# r read, u update, d delete, s search. A type a role does not list is refused.
ROLES: Mapping[str, Role] = MappingProxyType(
    {
        "admin": _role("admin", {ALL: "cruds"}),
        "radiologist": _role(
            "radiologist",
            {
                **_directory("rs"),
                "Patient": "rs",
                "Encounter": "rs",
                "Condition": "rs",
                "AllergyIntolerance": "rs",
                "ServiceRequest": "rus",
                "Appointment": "rs",
                "ImagingStudy": "rus",
                "Procedure": "rs",
                "DiagnosticReport": "cruds",
                "Observation": "cruds",
                "DocumentReference": "crus",
                "Media": "rs",
            },
        ),
        "technologist": _role(
            "technologist",
            {
                **_directory("rs"),
                "Patient": "rs",
                "Encounter": "rs",
                "AllergyIntolerance": "rs",
                "ServiceRequest": "rus",
                "Appointment": "rus",
                "ImagingStudy": "crus",
                "Procedure": "crus",
                "Observation": "crs",
                "Media": "crs",
            },
        ),
        "scheduler": _role(
            "scheduler",
            {
                **_directory("rs"),
                "Patient": "crus",
                "Encounter": "crus",
                "ServiceRequest": "rus",
                "Appointment": "cruds",
                "Schedule": "cruds",
                "Slot": "cruds",
            },
        ),
        "referrer": _role(
            "referrer",
            {
                **_directory("rs"),
                "Patient": "crs",
                "Encounter": "rs",
                "ServiceRequest": "crus",
                "Appointment": "rs",
                "ImagingStudy": "rs",
                "DiagnosticReport": ("rs", RELEASED),
                "Observation": ("rs", RELEASED),
            },
            own_patients=True,
        ),
        "patient": _role(
            "patient",
            {
                **_directory("rs"),
                "Patient": "rs",
                "Encounter": "rs",
                "ServiceRequest": "rs",
                "Appointment": "rs",
                "ImagingStudy": "rs",
                "DiagnosticReport": ("rs", RELEASED),
                "Observation": ("rs", RELEASED),
            },
            own=True,
        ),
    }
)


def roles_named(names: Iterable[str]) -> tuple[Role, ...]:
    """The known roles among ``names`` (unknown names grant nothing)."""
    return tuple(ROLES[n] for n in sorted(set(names)) if n in ROLES)


def patient_of(fhir_user: str | None) -> str | None:
    """The Patient id of a ``fhirUser`` reference (``Patient/123`` or an absolute URL)."""
    return _id_of(fhir_user, "Patient")


def practitioner_of(fhir_user: str | None) -> str | None:
    """The Practitioner id of a ``fhirUser`` reference (``Practitioner/7`` or an absolute URL)."""
    return _id_of(fhir_user, "Practitioner")


def _id_of(fhir_user: str | None, resource_type: str) -> str | None:
    if not fhir_user:
        return None
    kind, _, rest = fhir_user.rstrip("/").rpartition("/")
    # "Patient" and "Practitioner" share a prefix: compare the last path segment
    return rest if kind.rpartition("/")[2] == resource_type and rest else None
