"""The authorization code flow with PKCE, from the login form to a FHIR read,
and its refusals (over the real ASGI stack)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from .conftest import AUD, BASE, REDIRECT, Smart, bearer, parse_form, query_of

PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe", "given": ["Jo"]}]}


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return result


async def seed(client: httpx.AsyncClient) -> None:
    assert (await client.put("/fhir/Patient/p1", json=PATIENT)).status_code in (200, 201)


async def test_login_consent_token_and_fhir_read(smart: Smart, client: httpx.AsyncClient) -> None:
    await seed(client)
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    flow = smart.request("openid fhirUser user/Patient.rs offline_access", nonce="n-1")
    code = await smart.code(flow, "rita")
    assert flow.redirect["iss"] == f"{BASE}/auth"
    response = await smart.exchange(flow, code)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "openid fhirUser user/Patient.rs offline_access"
    assert body["refresh_token"]
    id_token = claims(body["id_token"])
    assert id_token["fhirUser"] == f"{AUD}/Practitioner/rita"
    assert id_token["aud"] == "app" and id_token["nonce"] == "n-1"
    access = claims(body["access_token"])
    assert access["aud"] == AUD and access["roles"] == ["radiologist"]
    read = await smart.http.get("/fhir/Patient/p1", headers=bearer(body["access_token"]))
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Doe"


async def test_openid_alone_gets_an_id_token(smart: Smart) -> None:
    """A token response to a request with ``openid`` includes an ID token (OpenID Connect
    Core §3.1.3.3), without ``fhirUser`` or ``profile`` too; the fhirUser claim comes only
    with those. oidc-client-ts (the OHIF viewer's client) fails the sign-in without one."""
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    body = await smart.tokens("openid user/ImagingStudy.rs", "rita", params={"nonce": "n-2"})
    assert body["scope"] == "openid user/ImagingStudy.rs"
    id_token = claims(body["id_token"])
    assert id_token["iss"] == f"{BASE}/auth" and id_token["aud"] == "app"
    assert id_token["sub"] == claims(body["access_token"])["sub"] and id_token["nonce"] == "n-2"
    assert "fhirUser" not in id_token
    without = await smart.tokens("user/ImagingStudy.rs", "rita")
    assert "id_token" not in without


async def test_user_may_grant_fewer_scopes(smart: Smart, client: httpx.AsyncClient) -> None:
    await seed(client)
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    body = await smart.tokens(
        "user/Patient.rs user/Observation.rs", "rita", grant=["user/Observation.rs"]
    )
    assert body["scope"] == "user/Observation.rs"
    read = await smart.http.get("/fhir/Patient/p1", headers=bearer(body["access_token"]))
    assert read.status_code == 403


async def test_role_caps_the_offered_scopes(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("sam", "scheduler")
    flow = smart.request("user/DiagnosticReport.rs user/Appointment.cruds")
    assert (await smart.login(flow, "sam")).status_code == 200
    assert flow.consent is not None
    assert flow.consent.checkboxes == ["user/Appointment.cruds"]
    refused = await smart.login(smart.request("user/DiagnosticReport.rs"), "sam")
    assert refused.status_code == 302
    assert query_of(refused.headers["location"])["error"] == "invalid_scope"


async def test_scheduler_token_cannot_read_reports(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client()
    await smart.add_user("sam", "scheduler")
    body = await smart.tokens("user/*.rs", "sam")
    token = bearer(body["access_token"])
    assert (await smart.http.get("/fhir/DiagnosticReport", headers=token)).status_code == 403
    assert (await smart.http.get("/fhir/Appointment", headers=token)).status_code == 200


async def test_wrong_or_missing_pkce_verifier(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    code = await smart.code(flow, "rita")
    wrong = await smart.exchange(flow, code, code_verifier="x" * 43)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    flow2 = smart.request("user/Patient.rs")
    code2 = await smart.code(flow2, "rita")
    missing = await smart.exchange(flow2, code2, code_verifier="")
    assert missing.json()["error"] == "invalid_grant"


async def test_pkce_is_required_at_authorize(smart: Smart) -> None:
    await smart.add_client()
    flow = smart.request("user/Patient.rs", code_challenge_method="plain")
    response = await smart.http.get("/auth/authorize", params=flow.params)
    assert response.status_code == 302
    answer = query_of(response.headers["location"])
    assert answer["error"] == "invalid_request" and answer["state"] == flow.params["state"]


async def test_prompt_none_answers_login_required(smart: Smart) -> None:
    """With ``prompt=none`` no page may be shown (OpenID Connect Core §3.1.2.1); a browser
    that has not signed in gets ``login_required`` at the redirect URI (§3.1.2.6). A
    client renewing its token in a hidden iframe (oidc-client-ts, in OHIF) got the login
    page instead, which its frame may not show, and retried forever. (A signed-in
    browser: tests/smart/test_signin_session.py.)"""
    await smart.add_client()
    flow = smart.request("openid user/Patient.rs", prompt="none")
    response = await smart.http.get("/auth/authorize", params=flow.params)
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT + "?")
    answer = query_of(response.headers["location"])
    assert answer["error"] == "login_required" and answer["state"] == flow.params["state"]
    assert "code" not in answer
    mixed = smart.request("openid user/Patient.rs", prompt="none consent")
    refused = await smart.http.get("/auth/authorize", params=mixed.params)
    assert query_of(refused.headers["location"])["error"] == "invalid_request"
    # login and consent are asked for anyway
    again = smart.request("openid user/Patient.rs", prompt="login consent")
    page = await smart.http.get("/auth/authorize", params=again.params)
    assert page.status_code == 200 and "id=password" in page.text


async def test_wrong_redirect_uri_is_not_followed(smart: Smart) -> None:
    await smart.add_client()
    flow = smart.request("user/Patient.rs")
    flow.params["redirect_uri"] = "https://evil.example.org/cb"
    response = await smart.http.get("/auth/authorize", params=flow.params)
    assert response.status_code == 400 and "location" not in response.headers
    flow2 = smart.request("user/Patient.rs")
    await smart.add_user("rita", "radiologist")
    code = await smart.code(flow2, "rita")
    mismatch = await smart.exchange(flow2, code, redirect_uri=REDIRECT + "/other")
    assert mismatch.json()["error"] == "invalid_grant"


async def test_wrong_audience_is_refused(smart: Smart) -> None:
    await smart.add_client()
    flow = smart.request("user/Patient.rs", aud="https://other.example.org/fhir")
    response = await smart.http.get("/auth/authorize", params=flow.params)
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_replayed_code_revokes_what_it_issued(
    smart: Smart, client: httpx.AsyncClient
) -> None:
    await seed(client)
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs offline_access")
    code = await smart.code(flow, "rita")
    first = (await smart.exchange(flow, code)).json()
    token = bearer(first["access_token"])
    assert (await smart.http.get("/fhir/Patient/p1", headers=token)).status_code == 200
    replay = await smart.exchange(flow, code)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert (await smart.http.get("/fhir/Patient/p1", headers=token)).status_code == 401
    refresh = await smart.http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "app",
        },
    )
    assert refresh.json()["error"] == "invalid_grant"


async def test_deny_and_wrong_password(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    bad = await smart.login(flow, "rita", "wrong")
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    assert (await smart.login(flow, "rita")).status_code == 200
    assert flow.consent is not None
    denied = await smart.http.post(
        "/auth/authorize", data={**flow.consent.fields, "decision": "deny"}
    )
    answer = query_of(denied.headers["location"])
    assert answer["error"] == "access_denied" and answer["state"] == flow.params["state"]


async def test_lockout_after_repeated_failures(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    statuses = [(await smart.login(flow, "rita", "nope")).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    locked = await smart.login(flow, "rita")  # the right password, but locked
    assert locked.status_code == 429


async def test_forged_consent_ticket_is_refused(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    await smart.login(flow, "rita")
    assert flow.consent is not None
    flow.consent.fields["ticket"] = flow.consent.fields["ticket"][:-4] + "AAAA"
    response = await smart.approve(flow)
    assert response.status_code == 401 and parse_form(response.text).fields["step"] == "login"


async def test_a_login_ticket_decides_one_consent(smart: Smart) -> None:
    """The consent form resent (or its ticket copied) cannot mint a second code."""
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    first = await smart.code(flow, "rita")
    again = await smart.approve(flow)
    assert again.status_code == 401 and parse_form(again.text).fields["step"] == "login"
    assert "already used" in again.text
    assert (await smart.exchange(flow, first)).status_code == 200


async def test_a_denied_consent_spends_its_ticket(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("user/Patient.rs")
    assert (await smart.login(flow, "rita")).status_code == 200
    assert flow.consent is not None
    denied = await smart.http.post(
        "/auth/authorize", data={**flow.consent.fields, "decision": "deny"}
    )
    assert denied.status_code == 302
    after = await smart.approve(flow)
    assert after.status_code == 401 and "location" not in after.headers


async def test_authorize_post_and_unsupported_grant(smart: Smart) -> None:
    await smart.add_client()
    flow = smart.request("user/Patient.rs")
    page = await smart.http.post("/auth/authorize", data=flow.params)
    assert page.status_code == 200 and "username" in parse_form(page.text).fields
    bad = await smart.http.post("/auth/token", data={"grant_type": "password", "client_id": "app"})
    assert bad.status_code == 400 and bad.json()["error"] == "unsupported_grant_type"
    unknown = await smart.http.post("/auth/token", data={"grant_type": "authorization_code"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
