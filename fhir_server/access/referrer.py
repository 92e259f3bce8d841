"""A referring physician's own patients, as search filters.

A Patient is Practitioner X's own patient when

- a ServiceRequest names ``Practitioner/X`` as ``requester`` and the Patient
  as ``subject``, unless that order is ``entered-in-error`` (an order keyed
  against the wrong patient must not open that patient's record), or
- the Patient names ``Practitioner/X`` as ``generalPractitioner``.

Both are R4 search parameters (``ServiceRequest.requester``,
``ServiceRequest.subject``, ``Patient.general-practitioner``), so the rule is a
search tree (``_has`` on Patient; a chain to that Patient from every other
compartment type) that each backend compiles into the query, and that a
single-resource check evaluates against the store. ``PractitionerRole``
requesters are not followed: the fhirUser of a user is a Practitioner.

Writes: a referrer orders in their own name (a ServiceRequest they create or
update must name them as ``requester``; that order is what makes its subject
their patient), and may register a new Patient (nothing is revealed by
content the client sends itself). Other writes, were a role table to allow
them, keep the read rule.

See https://hl7.org/fhir/R4/search.html#has and #chaining
"""

from __future__ import annotations

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.context import Interaction
from fhir_server.search.ast import And, Chain, Compare, Has, Node, Not, Or
from fhir_server.search.values import ReferenceValue, TokenValue

ORDER = "ServiceRequest"
_WRITES = frozenset({Interaction.CREATE, Interaction.UPDATE, Interaction.PATCH})


def requested_by(practitioner_id: str) -> Node:
    """ServiceRequests whose ``requester`` is ``Practitioner/{practitioner_id}``."""
    return Compare("requester", "reference", ReferenceValue("Practitioner", practitioner_id))


def own_patients(practitioner_id: str) -> Node:
    """The Patients that are ``Practitioner/{practitioner_id}``'s own (module docstring)."""
    in_error = Compare("status", "token", TokenValue(None, "entered-in-error"))
    ordered = Has(ORDER, "subject", And((requested_by(practitioner_id), Not(in_error))))
    registered = Compare(
        "general-practitioner", "reference", ReferenceValue("Practitioner", practitioner_id)
    )
    return Or((ordered, registered))


def of_patients(compartment: PatientCompartment, resource_type: str, patients: Node) -> Node | None:
    """``resource_type`` resources in the compartment of a Patient matching ``patients``;
    None when the type is never in a Patient compartment (directory data)."""
    if resource_type == "Patient":
        return patients
    params = compartment.params_for(resource_type)
    if not params:
        return None
    chains = tuple(Chain(p, "Patient", patients) for p in params)
    return chains[0] if len(chains) == 1 else Or(chains)


def referrer_filter(
    compartment: PatientCompartment,
    resource_type: str,
    practitioner_id: str,
    action: Interaction,
) -> Node | None:
    """What a referrer may reach among ``resource_type`` resources for ``action``
    (None: no restriction from this rule)."""
    if action in _WRITES and resource_type == ORDER:
        return requested_by(practitioner_id)
    if action == Interaction.CREATE and resource_type == "Patient":
        return None
    return of_patients(compartment, resource_type, own_patients(practitioner_id))
