"""Access control: SMART scopes, the Patient compartment, the policy and the token seam."""

from __future__ import annotations

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.context import AuthContext, Interaction, Permission
from fhir_server.access.policy import (
    AccessPolicy,
    ConstraintCompiler,
    Grant,
    UnsupportedConstraint,
    compartment_filter,
    compile_token_constraints,
    match_filter,
)
from fhir_server.access.scopes import (
    NON_RESOURCE_SCOPES,
    Constraint,
    Level,
    RejectedScope,
    ResourceScope,
    ScopeSet,
    parse_scope,
)
from fhir_server.access.stored import Lookup, Matcher, Searcher, ids_matching, lookup_in
from fhir_server.access.tokens import (
    REALM,
    TokenVerifier,
    bearer_challenge,
    bearer_token,
    invalid_token,
)

__all__ = [
    "NON_RESOURCE_SCOPES",
    "REALM",
    "AccessPolicy",
    "AuthContext",
    "Constraint",
    "ConstraintCompiler",
    "Grant",
    "Interaction",
    "Level",
    "Lookup",
    "Matcher",
    "PatientCompartment",
    "Permission",
    "RejectedScope",
    "ResourceScope",
    "ScopeSet",
    "Searcher",
    "TokenVerifier",
    "UnsupportedConstraint",
    "bearer_challenge",
    "bearer_token",
    "compartment_filter",
    "compile_token_constraints",
    "ids_matching",
    "invalid_token",
    "lookup_in",
    "match_filter",
    "parse_scope",
]
