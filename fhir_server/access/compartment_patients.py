"""Whose record a resource is: the Patient an audit record names for it.

IHE's Basic Audit Log Patterns (BALP) ask every AuditEvent of a RESTful access
to a resource in a Patient compartment to name that Patient as an entity
(role 1, type Person), so a patient's accesses can be found with
``AuditEvent?patient=`` whoever read them: a clinician's or a system's token
names no patient. The compartment's search parameters (R4
CompartmentDefinition ``patient``) say which references put a resource in a
patient's compartment; their FHIRPath here is a plain path, sometimes narrowed
by ``where(resolve() is Patient)``, so walking the JSON finds them in a few
microseconds. Full index extraction costs more than the rest of a read, and
every read is audited. A parameter whose expression is anything else goes
through the extractor.

A resource can belong to more than one compartment (an Observation whose
performer is another patient); the first one, in the definition's order of
parameters (subject before performer), is the one named.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeGuard

from fhir_server.access.compartment import PatientCompartment
from fhir_server.search.extract import extract_param, parse_reference
from fhir_server.search.registry import ParamDef, SearchRegistry, branches_for
from fhir_server.search.values import ReferenceValue

_PLAIN = re.compile(r"[A-Za-z]+(\.[A-Za-z]+)+")
_ONLY_PATIENTS = ".where(resolve() is Patient)"

# per type: the dotted paths under the resource, or the parameter for the extractor
Route = tuple[str, ...] | ParamDef


def _routes(param: ParamDef, resource_type: str) -> list[Route]:
    branches = branches_for(param.expression, resource_type)
    paths: list[Route] = []
    for branch in branches:
        path = branch.removesuffix(_ONLY_PATIENTS)  # a Patient is all that counts anyway
        if not _PLAIN.fullmatch(path) or not path.startswith(resource_type + "."):
            return [param]
        paths.append(tuple(path.split(".")[1:]))
    return paths


def _found(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """The values at ``path`` under ``node``, through lists as FHIRPath goes."""
    if not path:
        yield node
        return
    value = node.get(path[0]) if isinstance(node, dict) else None
    for item in value if isinstance(value, list) else (value,):
        if item is not None:
            yield from _found(item, path[1:])


@dataclass(frozen=True, eq=False, slots=True)
class CompartmentPatients:
    """Finds the Patient whose compartment holds a resource (module docstring)."""

    routes: Mapping[str, tuple[Route, ...]]
    codes: Mapping[str, tuple[str, ...]]  # the compartment's parameters by type
    registry: SearchRegistry

    @classmethod
    def build(
        cls, compartment: PatientCompartment, registry: SearchRegistry
    ) -> CompartmentPatients:
        routes: dict[str, tuple[Route, ...]] = {}
        for resource_type, codes in compartment.params.items():
            found: list[Route] = []
            for code in codes if resource_type != "Patient" else ():
                param = registry.param(resource_type, code)
                if param is not None:
                    found += _routes(param, resource_type)
            if found:
                routes[resource_type] = tuple(found)
        # ``patient`` is each type's reference to its Patient, in or out of the definition
        asked = {
            t: (*c, "patient") if registry.param(t, "patient") and "patient" not in c else c
            for t, c in compartment.params.items()
            if t != "Patient"
        }
        return cls(MappingProxyType(routes), MappingProxyType(asked), registry)

    def patient_of(self, resource_type: str, body: dict[str, Any]) -> str | None:
        """The id of the Patient whose record this resource is, or None (for a Patient
        too: an audit record names it as the resource accessed)."""
        for route in self.routes.get(resource_type, ()):
            if isinstance(route, ParamDef):
                for entry in extract_param(body, route, self.registry.base_url):
                    if _is_patient(entry.value):
                        return entry.value.id
                continue
            for item in _found(body, route):
                text = item.get("reference") if isinstance(item, dict) else None
                if isinstance(text, str):
                    reference = parse_reference(self.registry.local_reference(text))
                    if reference is not None and _is_patient(reference):
                        return reference.id
        return None

    def patient_asked_for(
        self, resource_type: str | None, params: Sequence[tuple[str, str]]
    ) -> str | None:
        """The one Patient a search is restricted to by a compartment parameter
        (``Observation?subject=Patient/p1``, ``?patient=p1``, ``?subject:Patient=p1``),
        or None: none, several, or a chain (a search by patient name names nobody)."""
        codes = self.codes.get(resource_type or "", ())
        found: set[str] = set()
        for name, value in params:
            code, _, modifier = name.partition(":")
            if code not in codes or "," in value or (modifier and modifier != "Patient"):
                continue
            typed = code == "patient" or modifier == "Patient"
            text = self.registry.local_reference(value)
            if typed and "/" not in text:
                text = f"Patient/{text}"
            reference = parse_reference(text)
            if reference is not None and _is_patient(reference):
                found.add(str(reference.id))
        return found.pop() if len(found) == 1 else None


def _is_patient(value: object) -> TypeGuard[ReferenceValue]:
    return isinstance(value, ReferenceValue) and value.type == "Patient" and bool(value.id)
