from __future__ import annotations

import pytest

from fhir_server.access import Interaction, RejectedScope, ResourceScope, ScopeSet, parse_scope

I = Interaction  # noqa: E741 -- short alias keeps the tables readable

# (scope string, resource type, interaction, allowed)
ALLOWS = [
    # v2
    ("patient/Observation.rs", "Observation", I.READ, True),
    ("patient/Observation.rs", "Observation", I.VREAD, True),
    ("patient/Observation.rs", "Observation", I.HISTORY_INSTANCE, True),
    ("patient/Observation.rs", "Observation", I.SEARCH, True),
    ("patient/Observation.rs", "Observation", I.HISTORY, True),
    ("patient/Observation.rs", "Observation", I.CREATE, False),
    ("patient/Observation.rs", "Observation", I.UPDATE, False),
    ("patient/Observation.rs", "Observation", I.DELETE, False),
    ("patient/Observation.rs", "Patient", I.READ, False),
    ("patient/Observation.r", "Observation", I.SEARCH, False),
    ("patient/Observation.s", "Observation", I.READ, False),
    ("user/*.cruds", "DiagnosticReport", I.CREATE, True),
    ("user/*.cruds", "DiagnosticReport", I.PATCH, True),
    ("user/*.cruds", "DiagnosticReport", I.DELETE, True),
    ("user/*.cruds", "DiagnosticReport", I.OPERATION, True),
    ("user/*.cud", "DiagnosticReport", I.READ, False),
    ("user/*.cud", "DiagnosticReport", I.OPERATION, False),
    ("user/ImagingStudy.u", "ImagingStudy", I.PATCH, True),
    ("user/ImagingStudy.u", "ImagingStudy", I.CREATE, False),
    ("system/*.r", "Patient", I.READ, True),
    ("system/*.r", "Patient", I.SEARCH, False),
    ("system/*.rs", "Binary", I.SEARCH, True),
    ("system/Patient.c", "Patient", I.CREATE, True),
    ("system/Patient.c", "Practitioner", I.CREATE, False),
    ("system/*.d", "Patient", I.DELETE, True),
    # v1
    ("patient/*.read", "Observation", I.READ, True),
    ("patient/*.read", "Observation", I.SEARCH, True),
    ("patient/*.read", "Observation", I.CREATE, False),
    ("user/Patient.write", "Patient", I.CREATE, True),
    ("user/Patient.write", "Patient", I.UPDATE, True),
    ("user/Patient.write", "Patient", I.DELETE, True),
    ("user/Patient.write", "Patient", I.READ, False),
    ("user/Patient.write", "Observation", I.CREATE, False),
    ("user/*.*", "Observation", I.OPERATION, True),
    ("system/Patient.*", "Patient", I.DELETE, True),
    # granular: the type and action are allowed; the constraint applies later
    ("patient/Observation.rs?category=http://x|laboratory", "Observation", I.SEARCH, True),
    ("patient/Observation.rs?category=http://x|laboratory", "Observation", I.CREATE, False),
    # several scopes
    ("patient/Patient.r user/Observation.s", "Observation", I.SEARCH, True),
    ("patient/Patient.r user/Observation.s", "Patient", I.SEARCH, False),
    # nothing
    ("", "Patient", I.READ, False),
    ("openid fhirUser launch/patient offline_access", "Patient", I.READ, False),
]


@pytest.mark.parametrize(("scope", "resource_type", "action", "allowed"), ALLOWS)
def test_allows(scope: str, resource_type: str, action: Interaction, allowed: bool) -> None:
    assert ScopeSet.parse(scope).allows(resource_type, action) is allowed


@pytest.mark.parametrize(
    ("scope", "level", "resource_type", "permissions", "constraints"),
    [
        ("patient/Observation.rs", "patient", "Observation", "rs", ()),
        ("user/*.cruds", "user", "*", "cruds", ()),
        ("system/*.r", "system", "*", "r", ()),
        ("patient/*.read", "patient", "*", "rs", ()),
        ("user/Patient.write", "user", "Patient", "cud", ()),
        ("user/*.*", "user", "*", "cruds", ()),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
            "observation-category|laboratory",
            "patient",
            "Observation",
            "rs",
            (
                (
                    "category",
                    "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                ),
            ),
        ),
        (
            "user/Observation.rs?category=laboratory&status=final",
            "user",
            "Observation",
            "rs",
            (("category", "laboratory"), ("status", "final")),
        ),
        (
            "user/Observation.rs?code=http%3A%2F%2Floinc.org%7C1-8",
            "user",
            "Observation",
            "rs",
            (("code", "http://loinc.org|1-8"),),
        ),  # fmt: skip
    ],
)
def test_parse_resource_scope(
    scope: str,
    level: str,
    resource_type: str,
    permissions: str,
    constraints: tuple[tuple[str, str], ...],
) -> None:
    parsed = parse_scope(scope)
    assert isinstance(parsed, ResourceScope)
    assert parsed.level == level
    assert parsed.resource_type == resource_type
    assert parsed.permissions == frozenset(permissions)
    assert parsed.constraints == constraints
    assert parsed.source == scope


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.sr",  # letters out of order
        "patient/Observation.rr",  # repeated letter
        "patient/Observation.x",
        "patient/Observation.",
        "patient/observation.rs",  # not a resource type
        "patient/Observation",
        "Observation.rs",
        "*.*",
        "admin/*.cruds",
        "patient/*.read?category=x",  # v1 cannot be constrained
        "patient/Observation.rs?",
        "patient/Observation.rs?category=",
        "patient/Observation.rs?category",
        "patient/Observation.rs?=x",
        "launch/practitioner",
        "email",
    ],
)
def test_bad_scopes_are_rejected_with_a_reason(scope: str) -> None:
    parsed = ScopeSet.parse(scope)
    assert parsed.resources == ()
    assert parsed.other == frozenset()
    assert len(parsed.rejected) == 1
    assert parsed.rejected[0].scope == scope
    assert parsed.rejected[0].reason


def test_bad_scopes_do_not_spoil_good_ones() -> None:
    parsed = ScopeSet.parse("openid patient/Observation.sr patient/Observation.rs  launch ???")
    assert [s.source for s in parsed.resources] == ["patient/Observation.rs"]
    assert parsed.other == {"openid", "launch"}
    assert [r.scope for r in parsed.rejected] == ["patient/Observation.sr", "???"]
    assert all(isinstance(r, RejectedScope) for r in parsed.rejected)


@pytest.mark.parametrize(
    "scope",
    [
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    ],
)
def test_non_resource_scopes_are_kept_aside(scope: str) -> None:
    parsed = ScopeSet.parse(scope)
    assert parsed.other == {scope}
    assert parsed.resources == ()
    assert parsed.rejected == ()


def test_granting_returns_the_constrained_scopes() -> None:
    parsed = ScopeSet.parse(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=imaging "
        "patient/Patient.rs"
    )
    granting = parsed.granting("Observation", Interaction.SEARCH)
    assert [g.constraints for g in granting] == [
        (("category", "laboratory"),),
        (("category", "imaging"),),
    ]


def test_none_and_whitespace_parse_to_nothing() -> None:
    assert ScopeSet.parse(None) == ScopeSet()
    assert ScopeSet.parse("  \t ") == ScopeSet()


def test_str_lists_the_accepted_scopes() -> None:
    assert str(ScopeSet.parse("patient/Patient.rs bogus openid")) == "patient/Patient.rs openid"


def test_allows_a_single_letter() -> None:
    assert ScopeSet.parse("user/Patient.rs").allows("Patient", "s")
    assert not ScopeSet.parse("user/Patient.rs").allows("Patient", "c")
