"""The access decision: which interactions a context may perform, and on what.

Decisions are made inside the query (STYLE.md point 12): a ``patient/`` scope
becomes a compartment filter, a granular scope's ``?param=value`` constraint
becomes a filter, and both are added to the search tree before the backend
compiles it. A single-resource interaction is allowed exactly when that same
filter would match the resource, so read and search always agree.

Choices, kept here so they are made once:

- **403 vs 404.** No scope for the type and action: 403 ``Forbidden`` (that
  reveals nothing about any resource). A scope for the type, but the stored
  resource is outside what it reaches (another patient's, another category):
  404 ``NotFound``, the same answer as for an id that does not exist, so a
  token cannot probe for other patients' records. Content the client sends
  (create, the new body of an update) outside its reach: 403, since the client
  already knows that content.
- **Shared reference data.** Types never in the Patient compartment
  (Practitioner, Organization, Location, Endpoint, Device...) can be read and
  searched under a ``patient/`` scope only when the scope names the type
  (``patient/Practitioner.rs``), never through ``patient/*``, and never
  written: a patient-context app has no business changing directory data,
  and ``*`` must not silently reach beyond the patient's own record.
- **Granular constraints** are compiled to filters; a constraint the
  compiler cannot express makes that scope grant nothing (refused, never
  widened).
- A ``patient/`` scope without a patient in the context grants nothing.
- **Referrers** (``referrer`` role) reach the compartments of their own
  patients only (``referrer.py``). That filter follows a chain and a
  ``_has``, so a single-resource check needs the store: ``check_stored``.
  A referrer user whose ``fhirUser`` is not a Practitioner gets nothing from
  that role.

See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
and https://hl7.org/fhir/R4/compartmentdefinition.html
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fhir_server.access.compartment import PatientCompartment
from fhir_server.access.context import AuthContext, Interaction, PerCaller
from fhir_server.access.referrer import of_patients, referrer_filter
from fhir_server.access.roles import Role, RoleRule, patient_of, practitioner_of, roles_named
from fhir_server.access.scopes import Constraint, ResourceScope, required
from fhir_server.access.stored import Lookup, Matcher, matches_stored, needs_store
from fhir_server.access.tokens import bearer_challenge
from fhir_server.errors import Forbidden, NotFound
from fhir_server.search.ast import And, Compare, Node, Not, Or
from fhir_server.search.values import IndexEntry, ReferenceValue, TokenValue

ConstraintCompiler = Callable[[str, tuple[Constraint, ...]], Node]
"""Turns a granular scope's constraints on a type into a filter; raises
``UnsupportedConstraint`` for what it cannot express."""

# Token search parameters the built-in compiler accepts in a granular scope:
# the ones SMART and US Core constrain on. The composition root can inject a
# compiler backed by the search registry to accept every parameter.
TOKEN_CONSTRAINT_PARAMS = frozenset({"category", "code", "status", "type", "_tag", "_security"})

_READ_ONLY = frozenset({"r", "s"})


class UnsupportedConstraint(ValueError):
    """A granular scope constraint that cannot be turned into a filter."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope usable for a request, and the filter it restricts to (None: all)."""

    scope: ResourceScope
    where: Node | None


def compile_token_constraints(resource_type: str, constraints: tuple[Constraint, ...]) -> Node:
    """``category=sys|code,sys|other&status=final`` -> And of Or of token Compares."""
    parts: list[Node] = []
    for param, value in constraints:
        if param not in TOKEN_CONSTRAINT_PARAMS:
            raise UnsupportedConstraint(f"cannot constrain {resource_type} on {param!r}")
        values = tuple(_token(v) for v in value.split(","))
        parts.append(Or(tuple(Compare(param, "token", v) for v in values)))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _token(text: str) -> TokenValue:
    if not text:
        raise UnsupportedConstraint("empty token in constraint")
    if "|" not in text:
        return TokenValue(None, text)
    system, code = text.split("|", 1)
    return TokenValue(system, code or None)


def compartment_filter(
    compartment: PatientCompartment, resource_type: str, patient_id: str
) -> Node | None:
    """The filter selecting ``patient_id``'s compartment among ``resource_type`` resources,
    or None when the type is never in a compartment."""
    if resource_type == "Patient":
        return Compare("_id", "token", TokenValue(None, patient_id))
    params = compartment.params_for(resource_type)
    if not params:
        return None
    ref = ReferenceValue("Patient", patient_id)
    return Or(tuple(Compare(p, "reference", ref) for p in params))


def match_filter(node: Node, resource_id: str, entries: Sequence[IndexEntry]) -> bool:
    """Evaluate the filters this module builds; anything else does not match (fail closed)."""
    if isinstance(node, And):
        return all(match_filter(p, resource_id, entries) for p in node.parts)
    if isinstance(node, Or):
        return any(match_filter(p, resource_id, entries) for p in node.parts)
    if isinstance(node, Not):
        return not match_filter(node.part, resource_id, entries)
    if not isinstance(node, Compare) or node.prefix != "eq" or node.modifier is not None:
        return False
    if node.param == "_id" and isinstance(node.value, TokenValue):
        return node.value.code == resource_id
    return any(e.param == node.param and _value_matches(node, e) for e in entries)


def _value_matches(node: Compare, entry: IndexEntry) -> bool:
    want, have = node.value, entry.value
    if isinstance(want, ReferenceValue) and isinstance(have, ReferenceValue):
        return (want.type, want.id) == (have.type, have.id)
    if isinstance(want, TokenValue) and isinstance(have, TokenValue):
        return _token_matches(want, have)
    return False


def _token_matches(want: TokenValue, have: TokenValue) -> bool:
    # See https://hl7.org/fhir/R4/search.html#token: [system]|[code] semantics.
    if want.code is not None and want.code != have.code:
        return False
    if want.system is None:
        return True
    if want.system == "":
        return not have.system
    return want.system == have.system


# Readable by administrators only: a user with the admin role (the role table
# lists it for no other role), a backend client granted system/ scopes for it,
# or a local admin tool token (``radhub token``, no roles); never by a
# patient-level scope, although AuditEvent is in the Patient compartment.
AUDIT_TRAIL_TYPES = frozenset({"AuditEvent"})


_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Decides every access against SMART scopes and the Patient compartment."""

    compartment: PatientCompartment
    compile_constraints: ConstraintCompiler = field(default=compile_token_constraints)
    matches: Matcher = field(default=match_filter)
    # Grants depend on the context, the action and the type only, and a client
    # repeats them (every read of a token, every entry of a transaction).
    _memo: PerCaller[tuple[Grant, ...]] = field(
        default_factory=lambda: PerCaller(_MEMO_SIZE), compare=False, repr=False
    )

    def grants(
        self, ctx: AuthContext, action: Interaction, resource_type: str
    ) -> tuple[Grant, ...]:
        """The scopes that can serve this request, each with its restriction."""
        known = self._memo.get(ctx, (action, resource_type))
        if known is not None:
            return known
        found = (self._grant(ctx, s, action, resource_type) for s in ctx.scopes.resources)
        grants = tuple(g for g in found if g is not None)
        return self._memo.put(ctx, (action, resource_type), grants)

    def authorize(self, ctx: AuthContext, action: Interaction, resource_type: str) -> None:
        """Raise Forbidden (403) unless some scope allows ``action`` on ``resource_type``."""
        if not self.grants(ctx, action, resource_type):
            raise _forbidden(action, resource_type)

    def search_filter(
        self,
        ctx: AuthContext,
        resource_type: str,
        action: Interaction = Interaction.SEARCH,
    ) -> Node | None:
        """The filter to AND into a search (or type history) on ``resource_type``;
        None when unrestricted. Raises Forbidden when nothing allows it."""
        grants = self.grants(ctx, action, resource_type)
        if not grants:
            raise _forbidden(action, resource_type)
        return _any_of(grants)

    def patient_scope(
        self, ctx: AuthContext, resource_type: str, action: Interaction
    ) -> Node | None:
        """The filter on Patient whose compartments hold all the caller may reach
        among ``resource_type`` resources, when that is the whole restriction (a
        referrer's own patients); None otherwise. Lets an index that knows each
        record's Patient (the DICOM index) apply the restriction."""
        where = self.search_filter(ctx, resource_type, action)
        if where is None or not self.grants(ctx, action, "Patient"):
            return None
        patients = self.search_filter(ctx, "Patient", action)
        if patients is None or where != of_patients(self.compartment, resource_type, patients):
            return None
        return patients

    def check_resource(
        self,
        ctx: AuthContext,
        action: Interaction,
        resource_type: str,
        resource_id: str,
        entries: Sequence[IndexEntry],
    ) -> None:
        """Check an interaction on one stored resource (with its index ``entries``).

        403 without a scope for the type; 404 when the resource lies outside
        what the scopes reach (for CREATE, 403: there is nothing to hide).
        """
        if not self._reaches(ctx, action, resource_type, resource_id, entries):
            raise _outside(action, resource_type, resource_id)

    async def check_stored(
        self,
        ctx: AuthContext,
        action: Interaction,
        resource_type: str,
        resource_id: str,
        entries: Callable[[], Sequence[IndexEntry]],
        lookup: Lookup,
    ) -> None:
        """``check_resource`` for every filter, also one that follows a chain or
        ``_has`` (a referrer's): those parts are answered by ``lookup`` on the store.

        ``entries`` is called only when a restriction applies (extracting the
        index costs more than the rest of a read).
        """
        where = self.search_filter(ctx, resource_type, action)  # 403 without a grant
        if where is None:
            return
        own = entries()
        if needs_store(where):
            ok = await matches_stored(where, resource_type, resource_id, own, lookup, self.matches)
        else:
            ok = self.matches(where, resource_id, own)
        if not ok:
            raise _outside(action, resource_type, resource_id)

    def check_content(
        self,
        ctx: AuthContext,
        action: Interaction,
        resource_type: str,
        resource_id: str,
        entries: Sequence[IndexEntry],
    ) -> None:
        """Check content the client sends (create, the new body of update or patch):
        Forbidden (403) unless it stays within what the scopes reach."""
        if not self._reaches(ctx, action, resource_type, resource_id, entries):
            raise _forbidden(action, resource_type, "the resource is outside the granted access")

    def _reaches(
        self,
        ctx: AuthContext,
        action: Interaction,
        resource_type: str,
        resource_id: str,
        entries: Sequence[IndexEntry],
    ) -> bool:
        grants = self.grants(ctx, action, resource_type)
        if not grants:
            raise _forbidden(action, resource_type)
        where = _any_of(grants)
        return where is None or self.matches(where, resource_id, entries)

    def _grant(
        self, ctx: AuthContext, scope: ResourceScope, action: Interaction, resource_type: str
    ) -> Grant | None:
        if resource_type in AUDIT_TRAIL_TYPES and scope.level == "patient":
            return None  # the trail is for administrators, not a patient's app
        grant = self._scope_grant(ctx, scope, action, resource_type)
        if grant is None or not ctx.roles or scope.level == "system":
            return grant
        allowed, cap = self._role_cap(ctx, action, resource_type)
        if not allowed:
            return None
        return Grant(scope, cap if grant.where is None else _both(grant.where, cap))

    def _role_cap(
        self, ctx: AuthContext, action: Interaction, resource_type: str
    ) -> tuple[bool, Node | None]:
        """Whether the user's roles allow ``action`` (roles.py), and their restriction."""
        found: list[Node] = []
        for role in roles_named(ctx.roles):
            rule = role.allows(resource_type, action)
            if rule is None:
                continue
            try:
                where = self._role_filter(role, rule, ctx, resource_type, action)
            except UnsupportedConstraint:
                continue
            if where is None:
                return True, None
            found.append(where)
        return bool(found), (found[0] if len(found) == 1 else Or(tuple(found)) if found else None)

    def _role_filter(
        self,
        role: Role,
        rule: RoleRule,
        ctx: AuthContext,
        resource_type: str,
        action: Interaction,
    ) -> Node | None:
        where = (
            self.compile_constraints(resource_type, rule.constraints) if rule.constraints else None
        )
        own = self._own_filter(role, ctx, resource_type, action)
        return where if own is None else _both(own, where)

    def _own_filter(
        self, role: Role, ctx: AuthContext, resource_type: str, action: Interaction
    ) -> Node | None:
        """The role's restriction to the user's own record or own patients, if any."""
        if role.own_record_only:
            patient = patient_of(ctx.fhir_user)
            if patient is None:
                raise UnsupportedConstraint("a patient user without a Patient fhirUser")
            return compartment_filter(self.compartment, resource_type, patient)
        if role.own_patients_only:
            practitioner = practitioner_of(ctx.fhir_user)
            if practitioner is None:
                raise UnsupportedConstraint("a referrer without a Practitioner fhirUser")
            return referrer_filter(self.compartment, resource_type, practitioner, action)
        return None

    def _scope_grant(
        self, ctx: AuthContext, scope: ResourceScope, action: Interaction, resource_type: str
    ) -> Grant | None:
        if not scope.grants(resource_type, action):
            return None
        try:
            constraint = self._constraint(scope, resource_type)
        except UnsupportedConstraint:
            return None
        if scope.level != "patient":
            return Grant(scope, constraint)
        if ctx.patient is None:
            return None
        in_compartment = compartment_filter(self.compartment, resource_type, ctx.patient)
        if in_compartment is None:
            return self._shared_data_grant(scope, action, resource_type, constraint)
        return Grant(scope, _both(in_compartment, constraint))

    def _constraint(self, scope: ResourceScope, resource_type: str) -> Node | None:
        if not scope.constraints:
            return None
        return self.compile_constraints(resource_type, scope.constraints)

    @staticmethod
    def _shared_data_grant(
        scope: ResourceScope, action: Interaction, resource_type: str, constraint: Node | None
    ) -> Grant | None:
        if scope.names(resource_type) and required(action) <= _READ_ONLY:
            return Grant(scope, constraint)
        return None


def _both(a: Node, b: Node | None) -> Node:
    # A patient user's own-record cap equals their patient/ scope's compartment:
    # keep one copy, so the filter stays one the DICOMweb index can apply.
    return a if b is None or b == a else And((a, b))


def _any_of(grants: Sequence[Grant]) -> Node | None:
    nodes: list[Node] = []
    for grant in grants:
        if grant.where is None:
            return None
        if grant.where not in nodes:
            nodes.append(grant.where)
    return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))


def _outside(action: Interaction, resource_type: str, resource_id: str) -> Forbidden | NotFound:
    # an existing resource outside the grant looks like one that does not exist
    if action.on_instance:
        return NotFound(f"{resource_type}/{resource_id} is not known")
    return _forbidden(action, resource_type)


def _forbidden(action: Interaction, resource_type: str, why: str | None = None) -> Forbidden:
    reason = why or "no granted scope allows it"
    return Forbidden(
        f"{action.value} on {resource_type} refused: {reason}",
        headers={"WWW-Authenticate": bearer_challenge(error="insufficient_scope")},
    )
