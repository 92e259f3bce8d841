from __future__ import annotations

from collections.abc import Sequence

import pytest

from fhir_server.access import (
    AccessPolicy,
    AuthContext,
    Interaction,
    PatientCompartment,
    ScopeSet,
    UnsupportedConstraint,
    compile_token_constraints,
    match_filter,
)
from fhir_server.errors import Forbidden, NotFound
from fhir_server.search.ast import And, Compare, Node, Or
from fhir_server.search.values import IndexEntry, ReferenceValue, TokenValue

I = Interaction  # noqa: E741
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
LAB_SYSTEM, LAB_CODE = LAB.split("|")


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return AccessPolicy(PatientCompartment.load())


def ctx(scope: str, patient: str | None = None) -> AuthContext:
    return AuthContext(subject="s", client_id="app", scopes=ScopeSet.parse(scope), patient=patient)


def subject(pid: str) -> IndexEntry:
    return IndexEntry("subject", ReferenceValue("Patient", pid))


def category(code: str, system: str = LAB_SYSTEM) -> IndexEntry:
    return IndexEntry("category", TokenValue(system, code))


def patient_refs(pid: str, *params: str) -> Or:
    ref = ReferenceValue("Patient", pid)
    return Or(tuple(Compare(p, "reference", ref) for p in params))


# --- authorize ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "patient", "action", "resource_type", "allowed"),
    [
        ("patient/Observation.rs", "p1", I.SEARCH, "Observation", True),
        ("patient/Observation.rs", "p1", I.CREATE, "Observation", False),
        ("patient/Observation.rs", None, I.SEARCH, "Observation", False),  # no patient context
        ("user/*.rs", None, I.READ, "DiagnosticReport", True),
        ("system/*.cruds", None, I.DELETE, "ImagingStudy", True),
        # shared reference data under patient/ scopes: named, read-only
        ("patient/*.rs", "p1", I.READ, "Practitioner", False),
        ("patient/Practitioner.rs", "p1", I.READ, "Practitioner", True),
        ("patient/Practitioner.rs", "p1", I.SEARCH, "Practitioner", True),
        ("patient/Organization.cruds", "p1", I.UPDATE, "Organization", False),
        ("patient/Organization.cruds", "p1", I.READ, "Organization", True),
        ("patient/*.cruds", "p1", I.CREATE, "Location", False),
        ("user/*.cruds", None, I.CREATE, "Location", True),
        # a constraint the compiler cannot express grants nothing
        ("user/Observation.rs?subject=Patient/p1", None, I.SEARCH, "Observation", False),
        ("user/Observation.rs?category:not=x", None, I.SEARCH, "Observation", False),
        ("", None, I.READ, "Patient", False),
    ],
)
def test_authorize(
    policy: AccessPolicy,
    scope: str,
    patient: str | None,
    action: Interaction,
    resource_type: str,
    allowed: bool,
) -> None:
    context = ctx(scope, patient)
    if allowed:
        policy.authorize(context, action, resource_type)
    else:
        with pytest.raises(Forbidden) as info:
            policy.authorize(context, action, resource_type)
        assert info.value.status == 403
        assert 'error="insufficient_scope"' in info.value.headers["WWW-Authenticate"]


# --- search_filter -------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "patient", "resource_type", "expected"),
    [
        ("user/*.rs", None, "Observation", None),
        ("system/*.rs", None, "Patient", None),
        (
            "patient/*.rs",
            "p1",
            "Patient",
            Compare("_id", "token", TokenValue(None, "p1")),
        ),
        ("patient/*.rs", "p1", "Observation", patient_refs("p1", "subject", "performer")),
        ("patient/*.rs", "p1", "ImagingStudy", patient_refs("p1", "patient")),
        ("patient/*.rs", "p1", "Appointment", patient_refs("p1", "actor")),
        ("patient/Practitioner.rs", "p1", "Practitioner", None),
        # a user/ scope alongside a patient/ one widens to everything (union of grants)
        ("patient/*.rs user/Observation.rs", "p1", "Observation", None),
        (
            f"patient/Observation.rs?category={LAB}",
            "p1",
            "Observation",
            And(
                (
                    patient_refs("p1", "subject", "performer"),
                    Or((Compare("category", "token", TokenValue(LAB_SYSTEM, LAB_CODE)),)),
                )
            ),
        ),
        (
            "user/Observation.rs?category=laboratory,imaging",
            None,
            "Observation",
            Or(
                (
                    Compare("category", "token", TokenValue(None, "laboratory")),
                    Compare("category", "token", TokenValue(None, "imaging")),
                )
            ),
        ),
        (
            "user/Observation.rs?category=laboratory user/Observation.rs?category=imaging",
            None,
            "Observation",
            Or(
                (
                    Or((Compare("category", "token", TokenValue(None, "laboratory")),)),
                    Or((Compare("category", "token", TokenValue(None, "imaging")),)),
                )
            ),
        ),
    ],
)
def test_search_filter(
    policy: AccessPolicy,
    scope: str,
    patient: str | None,
    resource_type: str,
    expected: Node | None,
) -> None:
    assert policy.search_filter(ctx(scope, patient), resource_type) == expected


def test_search_filter_refuses_without_scope(policy: AccessPolicy) -> None:
    with pytest.raises(Forbidden):
        policy.search_filter(ctx("patient/Observation.rs", "p1"), "DiagnosticReport")


def test_search_filter_for_type_history_needs_s(policy: AccessPolicy) -> None:
    with pytest.raises(Forbidden):
        policy.search_filter(ctx("user/Patient.r"), "Patient", Interaction.HISTORY)
    assert policy.search_filter(ctx("user/Patient.s"), "Patient", Interaction.HISTORY) is None


# --- check_resource / check_content ------------------------------------------


@pytest.mark.parametrize(
    ("scope", "resource_type", "resource_id", "entries"),
    [
        ("patient/*.rs", "Patient", "p1", []),
        ("patient/*.rs", "Observation", "o1", [subject("p1")]),
        ("patient/*.rs", "Observation", "o1", [subject("p2"), subject("p1")]),
        ("patient/Practitioner.r", "Practitioner", "pr1", []),
        ("user/*.r", "Observation", "o1", [subject("p2")]),
        (
            f"patient/Observation.r?category={LAB}",
            "Observation",
            "o1",
            [subject("p1"), category(LAB_CODE)],
        ),  # fmt: skip
        (
            "patient/Observation.r?category=laboratory",
            "Observation",
            "o1",
            [subject("p1"), category("laboratory", "any-system")],
        ),  # fmt: skip
    ],
)
def test_check_resource_allows(
    policy: AccessPolicy,
    scope: str,
    resource_type: str,
    resource_id: str,
    entries: Sequence[IndexEntry],
) -> None:
    policy.check_resource(ctx(scope, "p1"), I.READ, resource_type, resource_id, entries)


@pytest.mark.parametrize(
    ("scope", "resource_type", "resource_id", "entries"),
    [
        ("patient/*.rs", "Patient", "p2", []),
        ("patient/*.rs", "Patient", "p2", [IndexEntry("link", ReferenceValue("Patient", "p1"))]),
        ("patient/*.rs", "Observation", "o1", [subject("p2")]),
        ("patient/*.rs", "Observation", "o1", []),
        (
            f"patient/Observation.r?category={LAB}",
            "Observation",
            "o1",
            [subject("p1"), category("imaging")],
        ),  # fmt: skip
        (
            f"patient/Observation.r?category={LAB}",
            "Observation",
            "o1",
            [subject("p2"), category(LAB_CODE)],
        ),  # fmt: skip
        ("user/Observation.r?category=laboratory", "Observation", "o1", [subject("p1")]),
    ],
)
def test_check_resource_hides_what_is_out_of_reach(
    policy: AccessPolicy,
    scope: str,
    resource_type: str,
    resource_id: str,
    entries: Sequence[IndexEntry],
) -> None:
    for action in (I.READ, I.VREAD, I.HISTORY_INSTANCE):
        with pytest.raises(NotFound):
            policy.check_resource(ctx(scope, "p1"), action, resource_type, resource_id, entries)


def test_check_resource_without_scope_is_forbidden(policy: AccessPolicy) -> None:
    with pytest.raises(Forbidden):
        policy.check_resource(ctx("patient/Patient.r", "p1"), I.READ, "Observation", "o1", [])


def test_writes_to_another_patients_resource(policy: AccessPolicy) -> None:
    context = ctx("patient/Observation.cruds", "p1")
    for action in (I.UPDATE, I.PATCH, I.DELETE):
        with pytest.raises(NotFound):
            policy.check_resource(context, action, "Observation", "o1", [subject("p2")])
    policy.check_resource(context, I.UPDATE, "Observation", "o1", [subject("p1")])


def test_check_content(policy: AccessPolicy) -> None:
    context = ctx("patient/Observation.cu", "p1")
    policy.check_content(context, I.CREATE, "Observation", "new", [subject("p1")])
    policy.check_content(context, I.UPDATE, "Observation", "o1", [subject("p1")])
    for action in (I.CREATE, I.UPDATE):
        with pytest.raises(Forbidden):
            policy.check_content(context, action, "Observation", "o1", [subject("p2")])
    with pytest.raises(Forbidden):  # create is never answered with 404
        policy.check_resource(context, I.CREATE, "Observation", "new", [subject("p2")])


def test_patient_scope_cannot_create_another_patient(policy: AccessPolicy) -> None:
    with pytest.raises(Forbidden):
        policy.check_content(ctx("patient/Patient.c", "p1"), I.CREATE, "Patient", "p9", [])


# --- constraint compilation and matching -------------------------------------


def test_compile_token_constraints() -> None:
    node = compile_token_constraints(
        "Observation", (("category", "http://s|lab,|bare,code"), ("status", "final"))
    )
    assert node == And(
        (
            Or(
                (
                    Compare("category", "token", TokenValue("http://s", "lab")),
                    Compare("category", "token", TokenValue("", "bare")),
                    Compare("category", "token", TokenValue(None, "code")),
                )
            ),
            Or((Compare("status", "token", TokenValue(None, "final")),)),
        )
    )


@pytest.mark.parametrize(
    "constraints",
    [(("subject", "Patient/p1"),), (("category:not", "x"),), (("category", "a,,b"),)],
)
def test_compile_token_constraints_refuses(constraints: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(UnsupportedConstraint):
        compile_token_constraints("Observation", constraints)


def test_an_injected_compiler_is_used() -> None:
    def compile_any(resource_type: str, constraints: tuple[tuple[str, str], ...]) -> Node:
        (param, value), *_ = constraints
        return Compare(param, "reference", ReferenceValue(*value.split("/")))

    policy = AccessPolicy(PatientCompartment.load(), compile_constraints=compile_any)
    context = ctx("user/Observation.rs?subject=Patient/p1")
    expected = Compare("subject", "reference", ReferenceValue("Patient", "p1"))
    assert policy.search_filter(context, "Observation") == expected
    policy.check_resource(context, I.READ, "Observation", "o1", [subject("p1")])


@pytest.mark.parametrize(
    ("want", "have", "matches"),
    [
        (TokenValue(None, "a"), TokenValue("s", "a"), True),
        (TokenValue("s", "a"), TokenValue("s", "a"), True),
        (TokenValue("s", "a"), TokenValue("t", "a"), False),
        (TokenValue("", "a"), TokenValue(None, "a"), True),
        (TokenValue("", "a"), TokenValue("s", "a"), False),
        (TokenValue("s", None), TokenValue("s", "z"), True),
        (TokenValue(None, "a"), TokenValue(None, "A"), False),
    ],
)
def test_match_filter_tokens(want: TokenValue, have: TokenValue, matches: bool) -> None:
    node = Compare("category", "token", want)
    assert match_filter(node, "x", [IndexEntry("category", have)]) is matches


def test_match_filter_fails_closed_on_what_it_does_not_know() -> None:
    entries = [IndexEntry("category", TokenValue(None, "a"))]
    assert not match_filter(Compare("category", "token", TokenValue(None, "a"), "ne"), "x", entries)
    assert not match_filter(
        Compare("category", "token", TokenValue(None, "a"), modifier="text"), "x", entries
    )


# --- memory of grants -----------------------------------------------------------


def test_grants_are_remembered_per_context_and_the_memory_is_bounded() -> None:
    from fhir_server.access.policy import _MEMO_SIZE

    policy = AccessPolicy(PatientCompartment.load())
    context = ctx("patient/*.rs", "p1")
    first = policy.grants(context, I.READ, "Observation")
    # the same context (the token verifier's object for a token) is answered from memory
    assert policy.grants(context, I.READ, "Observation") is first
    # an equal one built anew gets an equal answer
    assert policy.grants(ctx("patient/*.rs", "p1"), I.READ, "Observation") == first
    # another patient is another context: never the first one's grant
    other = policy.grants(ctx("patient/*.rs", "p2"), I.READ, "Observation")
    assert other != first and "p2" in repr(other) and "p1" not in repr(other)
    for n in range(_MEMO_SIZE + 10):
        policy.grants(ctx("patient/*.rs", f"p{n}"), I.READ, "Observation")
    assert len(policy._memo) <= _MEMO_SIZE
