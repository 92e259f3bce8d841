"""The Patient compartment, from the official R4 CompartmentDefinition.

A resource is in patient P's compartment when one of the definition's search
parameters for its type references ``Patient/P``; a type the definition lists
without parameters (Practitioner, Organization...) or does not list at all is
never in it. See https://hl7.org/fhir/R4/compartmentdefinition-patient.html

Deliberate narrowing: the definition puts ``Patient.link`` in the compartment
(a Patient that links to P). Access control does not follow links — P's
compartment holds the Patient resource P itself only — because links merge
records across identities and must be resolved by an explicit, audited step,
not implicitly widen what a patient token sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from types import MappingProxyType
from typing import Any

from fhir_server.search.values import IndexEntry, ReferenceValue

DEFINITION_FILE = "compartment-patient-r4.json"


@dataclass(frozen=True, eq=False, slots=True)
class PatientCompartment:
    """Which search parameters put each resource type in a patient's compartment."""

    params: Mapping[str, tuple[str, ...]]

    @classmethod
    def load(cls) -> PatientCompartment:
        """Load the definition shipped in ``fhir_server/definitions``."""
        resource = files("fhir_server").joinpath("definitions").joinpath(DEFINITION_FILE)
        return cls.from_definition(json.loads(resource.read_text(encoding="utf-8")))

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any]) -> PatientCompartment:
        """Build from a CompartmentDefinition resource (JSON)."""
        if definition.get("code") != "Patient":
            raise ValueError("not a Patient CompartmentDefinition")
        params = {
            entry["code"]: tuple(entry.get("param", ())) for entry in definition.get("resource", ())
        }
        return cls(MappingProxyType(params))

    def params_for(self, resource_type: str) -> tuple[str, ...]:
        """The definition's parameters for ``resource_type``; empty: never in a compartment.

        For Patient this is ``("link",)``, which access control does not follow
        (see the module docstring): a Patient is a member by its id.
        """
        return self.params.get(resource_type, ())

    def contains_type(self, resource_type: str) -> bool:
        """Whether resources of this type can be in a patient's compartment."""
        return resource_type == "Patient" or bool(self.params_for(resource_type))

    def is_member(
        self,
        resource_type: str,
        resource_id: str,
        entries: Sequence[IndexEntry],
        patient_id: str,
    ) -> bool:
        """Whether the resource (with its extracted index ``entries``) is in the compartment."""
        if resource_type == "Patient":
            return resource_id == patient_id
        params = self.params_for(resource_type)
        return any(e.param in params and _refers_to(e, patient_id) for e in entries)


def _refers_to(entry: IndexEntry, patient_id: str) -> bool:
    value = entry.value
    return isinstance(value, ReferenceValue) and value.type == "Patient" and value.id == patient_id
