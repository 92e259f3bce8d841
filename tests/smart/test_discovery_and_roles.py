"""Discovery, the CapabilityStatement's SMART extension, the role table in the
access policy, and the audit trail's hash chain."""

from __future__ import annotations

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_server.access import AccessPolicy, AuthContext, Interaction, PatientCompartment, ScopeSet
from fhir_server.audit_chain import GENESIS, event_hash, link, previous_of
from fhir_server.errors import Forbidden
from fhir_server.search.values import IndexEntry, ReferenceValue, TokenValue

from .conftest import AUD, BASE, Smart

I = Interaction  # noqa: E741


async def test_smart_configuration(smart: Smart) -> None:
    response = await smart.http.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    conf = response.json()
    assert conf["issuer"] == f"{BASE}/auth"
    assert conf["token_endpoint"] == f"{BASE}/auth/token"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert {"launch-ehr", "launch-standalone", "permission-v2", "sso-openid-connect"} <= set(
        conf["capabilities"]
    )


async def test_openid_provider_metadata_lets_a_relying_party_check_the_id_token(
    smart: Smart,
) -> None:
    """What an OIDC client library does with ``openid``: the metadata from
    ``{iss}/.well-known/openid-configuration`` (no token), the keys from its
    ``jwks_uri``, then the id_token checked against both (OpenID Connect Core
    §3.1.3.7)."""
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    flow = smart.request("openid fhirUser user/Patient.rs", nonce="n-7")
    body = (await smart.exchange(flow, await smart.code(flow, "rita"))).json()
    issuer = flow.redirect["iss"]
    response = await smart.http.get(f"{issuer}/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["issuer"] == issuer == f"{BASE}/auth"  # §4.3: the same string exactly
    for required in (
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert meta[required], required
    assert meta["token_endpoint"] == f"{BASE}/auth/token"
    assert "code" in meta["response_types_supported"]
    assert "RS256" in meta["id_token_signing_alg_values_supported"]
    assert {"openid", "fhirUser"} <= set(meta["scopes_supported"])
    jwks = (await smart.http.get(meta["jwks_uri"])).json()
    algorithms = meta["id_token_signing_alg_values_supported"]
    token = jwt.decode(body["id_token"], KeySet.import_key_set(jwks), algorithms=algorithms)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": "app"},
        nonce={"essential": True, "value": "n-7"},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    ).validate(token.claims)
    assert set(token.claims) <= set(meta["claims_supported"])
    assert token.claims["fhirUser"] == f"{AUD}/Practitioner/rita"


async def test_capability_statement_carries_the_oauth_uris(smart: Smart) -> None:
    statement = (await smart.http.get("/fhir/metadata")).json()
    security = statement["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == f"{BASE}/auth/authorize"
    assert uris["token"] == f"{BASE}/auth/token"
    assert uris["revoke"] == f"{BASE}/auth/revoke"


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return AccessPolicy(PatientCompartment.load())


def user(roles: str, scope: str = "user/*.cruds", fhir_user: str | None = None) -> AuthContext:
    return AuthContext(
        "u", "app", ScopeSet.parse(scope), fhir_user=fhir_user, roles=frozenset(roles.split())
    )


@pytest.mark.parametrize(
    ("roles", "action", "resource_type", "allowed"),
    [
        ("scheduler", I.SEARCH, "DiagnosticReport", False),
        ("scheduler", I.CREATE, "Appointment", True),
        ("technologist", I.READ, "DiagnosticReport", False),
        ("technologist", I.UPDATE, "ImagingStudy", True),
        ("radiologist", I.CREATE, "DiagnosticReport", True),
        ("radiologist", I.DELETE, "Patient", False),
        ("referrer", I.UPDATE, "DiagnosticReport", False),
        ("admin", I.DELETE, "Patient", True),
        ("scheduler technologist", I.UPDATE, "ImagingStudy", True),  # the union of roles
        ("nurse", I.READ, "Patient", False),  # unknown roles grant nothing
    ],
)
def test_roles_cap_user_scopes(
    policy: AccessPolicy, roles: str, action: Interaction, resource_type: str, allowed: bool
) -> None:
    ctx = user(roles)
    if allowed:
        policy.authorize(ctx, action, resource_type)
    else:
        with pytest.raises(Forbidden):
            policy.authorize(ctx, action, resource_type)


def test_system_scopes_and_role_less_tokens_are_not_capped(policy: AccessPolicy) -> None:
    policy.authorize(user("scheduler", "system/*.rs"), I.READ, "DiagnosticReport")
    no_roles = AuthContext("cli", None, ScopeSet.parse("user/*.rs"))
    policy.authorize(no_roles, I.READ, "DiagnosticReport")


def test_patient_role_reads_own_final_reports_only(policy: AccessPolicy) -> None:
    ctx = user("patient", "user/*.rs", "Patient/p1")

    def entries(pid: str, status: str) -> list[IndexEntry]:
        return [
            IndexEntry("subject", ReferenceValue("Patient", pid)),
            IndexEntry("patient", ReferenceValue("Patient", pid)),
            IndexEntry(
                "status", TokenValue("http://hl7.org/fhir/diagnostic-report-status", status)
            ),
        ]

    policy.check_resource(ctx, I.READ, "DiagnosticReport", "r1", entries("p1", "final"))
    for pid, status in (("p1", "preliminary"), ("p2", "final")):
        with pytest.raises(Exception, match="not known"):
            policy.check_resource(ctx, I.READ, "DiagnosticReport", "r", entries(pid, status))
    with pytest.raises(Forbidden):
        policy.authorize(ctx, I.UPDATE, "Patient")
    without_patient = user("patient", "user/*.rs", "Practitioner/x")
    with pytest.raises(Forbidden):
        policy.authorize(without_patient, I.READ, "Patient")


def test_referrer_orders_in_own_name_and_reads_through_the_store(policy: AccessPolicy) -> None:
    ctx = user("referrer", "user/*.cruds", "Practitioner/r1")

    def order(requester: str) -> list[IndexEntry]:
        return [
            IndexEntry("subject", ReferenceValue("Patient", "anyone")),
            IndexEntry("requester", ReferenceValue("Practitioner", requester)),
        ]

    policy.check_content(ctx, I.CREATE, "ServiceRequest", "o1", order("r1"))
    with pytest.raises(Forbidden):
        policy.check_content(ctx, I.CREATE, "ServiceRequest", "o2", order("r2"))
    policy.check_content(ctx, I.CREATE, "Patient", "new", [])  # registering a patient
    # "own patient" follows the orders: without the store, a single check fails closed
    report = [IndexEntry("subject", ReferenceValue("Patient", "anyone"))]
    with pytest.raises(Exception, match="not known"):
        policy.check_resource(ctx, I.READ, "DiagnosticReport", "r", report)
    with pytest.raises(Forbidden):
        policy.authorize(user("referrer", "user/*.rs", "Patient/p1"), I.READ, "Patient")


def test_chain_links_detect_changes() -> None:
    first = link({"resourceType": "AuditEvent", "id": "a"}, GENESIS)
    second = link({"resourceType": "AuditEvent", "id": "b"}, event_hash(first))
    assert previous_of(second) == event_hash(first)
    changed = orjson.loads(orjson.dumps(first))
    changed["id"] = "z"
    assert event_hash(changed) != previous_of(second)
