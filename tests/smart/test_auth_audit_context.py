"""Sign-in, consent and launch AuditEvents name the client asking and the
network address the request came from: a failed login used to be ``anonymous``
and nothing more, so repeated attempts could not be traced, and a minted EHR
launch left no AuditEvent at all."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import MintToken

from .conftest import Smart, audit_events, bearer, parse_form


def names_client_and_address(event: dict[str, Any], client_id: str) -> bool:
    agents = event["agent"]
    addressed = any(a.get("network", {}).get("address") for a in agents)
    named = any(a["who"].get("identifier", {}).get("value") == client_id for a in agents)
    return addressed and named


async def test_login_and_consent_events_name_the_client_and_address(
    smart: Smart, admin: httpx.AsyncClient
) -> None:
    await smart.add_client("app", scope="user/*.rs")
    await smart.add_user("rad", "radiologist", "Practitioner/r1")
    page = await smart.http.get("/auth/authorize", params=smart.request("user/Patient.rs").params)
    fields = parse_form(page.text).fields
    wrong = {**fields, "username": "rad", "password": "wrong-password"}
    assert (await smart.http.post("/auth/authorize", data=wrong)).status_code == 401
    await smart.code(smart.request("user/Patient.rs"), "rad")
    for query, text in [
        ({"subtype": "login"}, "wrong user name"),
        ({"subtype": "consent"}, "code issued"),
    ]:
        [event] = await audit_events(admin, query, text)
        assert names_client_and_address(event, "app"), json.dumps(event["agent"])


async def test_a_minted_launch_is_audited(
    smart: Smart, admin: httpx.AsyncClient, mint: MintToken
) -> None:
    await smart.add_client("app", scope="user/*.rs launch")
    ehr = mint("system/Patient.rs", subject="ehr", client_id="ehr")
    minted = await smart.http.post(
        "/auth/launch", data={"client_id": "app", "patient": "p1"}, headers=bearer(ehr)
    )
    assert minted.status_code == 200
    [event] = await audit_events(admin, {"subtype": "launch"}, "launch minted for client app")
    assert names_client_and_address(event, "ehr"), json.dumps(event["agent"])
    assert event["entity"][0]["what"]["reference"] == "Patient/p1"
