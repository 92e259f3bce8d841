"""DICOM/IHE event codes on the authorisation server's AuditEvents: table-driven over
the pure mapping, then over HTTP for a failed login, a refused token request, a
successful sign-in and a revocation."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from fhir_server.access import AuthContext, ScopeSet
from fhir_server.audit import AUTH_EVENT_SYSTEM, AuditRecord, to_audit_event
from fhir_server.audit_index import audit_index
from fhir_server.search.extract import extract_param
from fhir_server.search.registry import SearchRegistry

from .conftest import Smart, audit_events

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE = "urn:ihe:event-type-code"
MOMENT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
ADMIN = AuthContext("adm", None, ScopeSet.parse("user/*.cruds"), fhir_user="Practitioner/a")

# interaction → (type system, type code, subtype system, subtype code, action)
EXPECTED = {
    "login": (DCM, "110114", DCM, "110122", "E"),
    "logout": (DCM, "110114", DCM, "110123", "E"),
    "revoke": (DCM, "110114", DCM, "110123", "E"),
    "authorize": (DCM, "110114", IHE, "ITI-71", "E"),
    "consent": (DCM, "110114", IHE, "ITI-71", "E"),
    "token": (DCM, "110114", IHE, "ITI-71", "E"),
    "introspect": (DCM, "110114", IHE, "ITI-102", "E"),
    "launch": (DCM, "110113", DCM, "110132", "C"),
    "metrics": (DCM, "110113", DCM, "110132", "R"),
    "admin-read": (DCM, "110113", DCM, "110132", "R"),
    "admin-client-create": (DCM, "110113", DCM, "110129", "C"),
    "admin-client-update": (DCM, "110113", DCM, "110129", "U"),
    "admin-client-delete": (DCM, "110113", DCM, "110129", "D"),
    "admin-user-create": (DCM, "110113", DCM, "110137", "C"),
    "admin-user-update": (DCM, "110113", DCM, "110137", "U"),
    "admin-user-delete": (DCM, "110113", DCM, "110137", "D"),
}
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"


@pytest.mark.parametrize("interaction", EXPECTED, ids=EXPECTED.keys())
@pytest.mark.parametrize("status", [200, 401, 500], ids=["ok", "refused", "failed"])
def test_auth_event_codes(interaction: str, status: int) -> None:
    event = to_audit_event(AuditRecord(interaction, status, MOMENT, ADMIN, description="why"))
    type_system, type_code, sub_system, sub_code, action = EXPECTED[interaction]
    assert (event["type"]["system"], event["type"]["code"]) == (type_system, type_code)
    assert event["type"]["display"]
    first, own = event["subtype"]
    assert (first["system"], first["code"]) == (sub_system, sub_code)
    assert own == {"system": AUTH_EVENT_SYSTEM, "code": interaction}
    assert event["action"] == action
    assert event["outcome"] == {200: "0", 401: "4", 500: "8"}[status]


@pytest.mark.parametrize("interaction", ["read", "search-type", "create", "history-system"])
def test_rest_interactions_keep_the_rest_type(interaction: str) -> None:
    event = to_audit_event(AuditRecord(interaction, 200, MOMENT, ADMIN))
    assert event["type"]["system"] == REST and event["type"]["code"] == "rest"
    assert event["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}
    ]


def test_the_tables_are_not_shared_with_the_events() -> None:
    event = to_audit_event(AuditRecord("login", 200, MOMENT, ADMIN))
    event["type"]["code"] = "changed"
    event["subtype"][0]["code"] = "changed"
    again = to_audit_event(AuditRecord("login", 200, MOMENT, ADMIN))
    assert again["type"]["code"] == "110114" and again["subtype"][0]["code"] == "110122"


@pytest.mark.parametrize("interaction", ["login", "token", "admin-user-create"])
def test_direct_index_equals_generic_extraction(interaction: str) -> None:
    """The hand-built AuditEvent index (fhir_server.audit_index) still agrees with
    generic extraction for the coded events (two subtypes each)."""
    registry = SearchRegistry.load()
    event = to_audit_event(AuditRecord(interaction, 401, MOMENT, ADMIN, address="10.0.0.9"))
    expected = Counter(
        entry
        for param in registry.params_for("AuditEvent").values()
        for entry in extract_param(event, param)
    )
    assert Counter(audit_index(event, MOMENT)) == expected


# -- over HTTP -----------------------------------------------------------------------


async def test_failed_and_successful_login(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client()
    user_id = await smart.add_user("rita", "radiologist", "Practitioner/7")
    flow = smart.request("user/*.rs")
    await smart.login(flow, "rita", "not her password")
    assert flow.consent is None or not flow.consent.checkboxes  # no consent page
    events = await audit_events(client, {"type": f"{DCM}|110114", "subtype": f"{DCM}|110122"})
    refused = [e for e in events if e["outcome"] != "0"]
    assert refused and "wrong user name or password" in refused[0]["outcomeDesc"]
    assert (await smart.login(smart.request("user/*.rs"), "rita")).status_code == 200
    signed_in = await audit_events(client, {"subtype": f"{DCM}|110122", "outcome": "0"}, user_id)
    assert signed_in and signed_in[0]["type"]["code"] == "110114"


async def test_refused_and_granted_token_requests(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client("app", secret="s3cret-s3cret")
    data = {"grant_type": "authorization_code", "code": "made-up", "client_id": "app"}
    refused = await smart.http.post("/auth/token", data={**data, "client_secret": "s3cret-s3cret"})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    wrong_secret = await smart.http.post("/auth/token", data={**data, "client_secret": "nope"})
    assert wrong_secret.status_code == 401
    query = {"type": f"{DCM}|110114", "subtype": f"{IHE}|ITI-71", "outcome": "4"}
    events = await audit_events(client, query, "invalid_grant")
    assert events and events[0]["action"] == "E"
    assert {"system": AUTH_EVENT_SYSTEM, "code": "token"} in events[0]["subtype"]
    assert await audit_events(client, query, "invalid_client")
    # the client is an agent of the event (DCM 110150 Application)
    agents = [a for a in events[0]["agent"] if a.get("type", {}).get("coding")]
    assert agents and agents[0]["who"]["identifier"]["value"] == "app"


async def test_revocation_is_a_logout(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client("app", secret="s3cret-s3cret")
    data = {"token": "whatever", "client_id": "app", "client_secret": "s3cret-s3cret"}
    assert (await smart.http.post("/auth/revoke", data=data)).status_code == 200
    events = await audit_events(client, {"subtype": f"{DCM}|110123", "outcome": "0"}, "revoked")
    assert events and events[0]["type"]["code"] == "110114"
