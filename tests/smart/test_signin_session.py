"""Sign-in sessions (smart.sessions): a browser that signed in is not asked for the
password again until the session ends, a consent it gave is remembered for that app,
and ``prompt``, ``max_age``, sign-out and an inactive account are honoured."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.responses import Response

from fhir_server.app import create_app
from fhir_server.cli import build_parser, settings_from
from fhir_server.settings import Settings
from fhir_server.storage.auth_port import Consent, SignInSession, UserRecord
from smart.config import AuthConfig
from smart.launch import Launches
from smart.secrets import digest, password_helper
from smart.sessions import SESSION_COOKIE, Sessions

from .conftest import (
    AUD,
    BASE,
    PASSWORD,
    REDIRECT,
    Flow,
    Smart,
    audit_events,
    bearer,
    parse_form,
    query_of,
)

SCOPE = "openid fhirUser user/Patient.rs user/ImagingStudy.rs"


async def signed_in(smart: Smart, scope: str = SCOPE, **extra: str) -> dict[str, object]:
    """rita signs in with her password and approves everything: the token response."""
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    return await smart.tokens(scope, "rita", params=extra)


async def again(smart: Smart, scope: str = SCOPE, **extra: str) -> tuple[Flow, httpx.Response]:
    """The same browser (its cookies kept) sends the app's next authorize request."""
    flow = smart.request(scope, **extra)
    return flow, await smart.http.get("/auth/authorize", params=flow.params)


def answer(flow: Flow, response: httpx.Response) -> dict[str, str]:
    """The redirect's query, checked to go to the app with the request's state."""
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(REDIRECT + "?")
    found = query_of(response.headers["location"])
    assert found["state"] == flow.params["state"]
    return found


def is_login_page(response: httpx.Response) -> bool:
    return response.status_code == 200 and "id=password" in response.text


def is_consent_page(response: httpx.Response) -> bool:
    return (
        response.status_code == 200
        and "decision" in response.text
        and "id=password" not in response.text
    )


def claims_of(id_token: str) -> dict[str, object]:
    """An id_token's claims (its signature is checked by the other SMART tests)."""
    payload = id_token.split(".")[1]
    found: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return found


def auth_time(id_token: str) -> object:
    return claims_of(id_token)["auth_time"]


async def test_a_signed_in_browser_gets_the_code_without_a_page(smart: Smart) -> None:
    first = await signed_in(smart)
    flow, response = await again(smart)
    code = answer(flow, response)["code"]
    exchanged = await smart.exchange(flow, code)
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert set(body["scope"].split()) == set(SCOPE.split())
    # the same sign-in: OpenID Connect's auth_time is the password's moment, not now
    assert auth_time(body["id_token"]) == auth_time(str(first["id_token"]))
    patients = await smart.http.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert patients.status_code == 200


async def test_silent_renewal_with_prompt_none_succeeds_in_a_session(smart: Smart) -> None:
    """What a viewer's hidden frame asks (oidc-client-ts): a code, no page."""
    await signed_in(smart)
    flow, response = await again(smart, prompt="none")
    assert "code" in answer(flow, response)


async def test_prompt_none_without_consent_for_that_app_is_consent_required(
    smart: Smart,
) -> None:
    await signed_in(smart)
    await smart.add_client("viewer")
    flow, response = await again(smart, prompt="none", client_id="viewer")
    found = answer(flow, response)
    assert found["error"] == "consent_required" and "code" not in found


async def test_more_than_was_offered_asks_consent_but_not_the_password(smart: Smart) -> None:
    await signed_in(smart, "openid user/Patient.rs")
    flow, response = await again(smart, "openid user/Patient.rs user/DiagnosticReport.rs")
    assert is_consent_page(response), response.text
    silent, refused = await again(
        smart, "openid user/Patient.rs user/DiagnosticReport.rs", prompt="none"
    )
    assert answer(silent, refused)["error"] == "consent_required"
    # approving on that page needs no password either
    flow.consent = parse_form(response.text)
    approved = await smart.approve(flow)
    assert "code" in answer(flow, approved)


async def test_fewer_scopes_than_were_granted_need_no_page(smart: Smart) -> None:
    await signed_in(smart)
    flow, response = await again(smart, "openid user/Patient.rs")
    code = answer(flow, response)["code"]
    body = (await smart.exchange(flow, code)).json()
    assert body["scope"].split() == ["openid", "user/Patient.rs"]


async def test_a_scope_the_user_left_unticked_is_not_granted_later(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    kept = ["openid", "user/Patient.rs"]
    await smart.tokens(SCOPE, "rita", grant=kept)
    flow, response = await again(smart)
    body = (await smart.exchange(flow, answer(flow, response)["code"])).json()
    assert body["scope"].split() == kept


@pytest.mark.parametrize(
    "extra",
    [{"prompt": "login"}, {"max_age": "0"}],
    ids=["prompt=login", "max_age=0"],
)
async def test_the_app_can_ask_for_the_password_again(smart: Smart, extra: dict[str, str]) -> None:
    await signed_in(smart)
    _, response = await again(smart, **extra)
    assert is_login_page(response), response.text


async def test_max_age_not_yet_reached_keeps_the_session(smart: Smart) -> None:
    await signed_in(smart)
    flow, response = await again(smart, max_age="3600")
    assert "code" in answer(flow, response)
    silent, refused = await again(smart, max_age="0", prompt="none")
    assert answer(silent, refused)["error"] == "login_required"
    bad, wrong = await again(smart, max_age="soon")
    assert answer(bad, wrong)["error"] == "invalid_request"


async def test_prompt_consent_shows_the_consent_page_again(smart: Smart) -> None:
    await signed_in(smart)
    _, response = await again(smart, prompt="consent")
    assert is_consent_page(response), response.text


async def test_a_denial_is_remembered_as_no_consent(smart: Smart) -> None:
    await signed_in(smart)
    flow, response = await again(smart, prompt="consent")
    form = parse_form(response.text)
    denied = await smart.http.post("/auth/authorize", data={**form.fields, "decision": "deny"})
    assert answer(flow, denied)["error"] == "access_denied"
    silent, refused = await again(smart, prompt="none")
    assert answer(silent, refused)["error"] == "consent_required"


async def test_a_picked_patient_is_remembered(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    patient = "p7"
    await patients(client, patient)
    scope = "openid launch/patient patient/Patient.rs"
    first = await smart.tokens(scope, "rita", patient=patient)
    assert first["patient"] == patient
    flow, response = await again(smart, scope, prompt="none")
    body = (await smart.exchange(flow, answer(flow, response)["code"])).json()
    assert body["patient"] == patient


async def test_signing_out_ends_the_session(smart: Smart, client: httpx.AsyncClient) -> None:
    await signed_in(smart)
    cookie = smart.http.cookies[SESSION_COOKIE]
    out = await smart.http.get("/auth/logout", params={"client_id": "app"})
    assert out.status_code == 200 and "id=signed-out" in out.text
    cleared = out.headers["set-cookie"]
    assert cleared.startswith(f"{SESSION_COOKIE}=") and "Max-Age=0" in cleared
    assert await smart.store.auth.get_session(digest(cookie)) is None
    # the browser kept the old cookie anyway: it names no session any more
    smart.http.cookies.set(SESSION_COOKIE, cookie, domain="radhub.test", path="/auth")
    _, response = await again(smart)
    assert is_login_page(response)
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    ended = await audit_events(client, {"subtype": "110123"}, "session ended", user.id)
    assert len(ended) == 1, ended


async def test_an_inactive_account_has_no_session(smart: Smart) -> None:
    await signed_in(smart)
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    await smart.store.auth.update_user(user.id, {"is_active": False})
    silent, refused = await again(smart, prompt="none")
    assert answer(silent, refused)["error"] == "login_required"


async def test_a_changed_password_ends_the_session(smart: Smart) -> None:
    """An admin resetting a compromised account's password shuts out the browser that
    signed in with the old one."""
    await signed_in(smart)
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    flow, response = await again(smart, prompt="none")
    assert "code" in answer(flow, response)  # the session counts until then
    await smart.store.auth.update_user(user.id, {"hashed_password": password_helper().hash("n")})
    silent, refused = await again(smart, prompt="none")
    assert answer(silent, refused)["error"] == "login_required"


async def test_a_new_sign_in_replaces_the_browsers_session(smart: Smart) -> None:
    await signed_in(smart)
    old = smart.http.cookies[SESSION_COOKIE]
    flow = smart.request(SCOPE, prompt="login")
    page = await smart.http.get("/auth/authorize", params=flow.params)
    login = {**parse_form(page.text).fields, "username": "rita", "password": PASSWORD}
    await smart.http.post("/auth/authorize", data=login)
    new = smart.http.cookies[SESSION_COOKIE]
    assert new != old
    assert await smart.store.auth.get_session(digest(old)) is None
    assert await smart.store.auth.get_session(digest(new)) is not None


async def test_the_cookie_is_http_only_lax_for_auth_and_stored_only_hashed(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    flow = smart.request(SCOPE)
    response = await smart.login(flow, "rita")
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path=/auth", "samesite=lax"} <= attributes
    assert "secure" not in attributes  # this test's issuer is http://
    # a browser session's cookie: closing the browser ends it on a shared workstation
    assert not [a for a in attributes if a.startswith(("max-age", "expires"))]
    value = smart.http.cookies[SESSION_COOKIE]
    assert len(value) >= 40
    assert await smart.store.auth.get_session(value) is None
    assert await smart.store.auth.get_session(digest(value)) is not None


@pytest.mark.parametrize(
    "sent",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://viewer.radhub.test"},
        {"Sec-Fetch-Site": "cross-site", "Origin": BASE},  # Fetch Metadata decides
    ],
)
async def test_a_form_posted_from_another_site_is_refused(
    smart: Smart, client: httpx.AsyncClient, sent: dict[str, str]
) -> None:
    """Login CSRF: another site's form must not sign this browser in to any account."""
    await smart.add_client()
    await smart.add_user("mallory", "radiologist")
    flow = smart.request(SCOPE)
    page = await smart.http.get("/auth/authorize", params=flow.params)
    data = {**parse_form(page.text).fields, "username": "mallory", "password": PASSWORD}
    forged = await smart.http.post("/auth/authorize", data=data, headers=sent)
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    assert SESSION_COOKIE not in smart.http.cookies
    found = await audit_events(client, {"outcome": "4"}, "not sent from this server")
    assert found
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}  # as under no-referrer
    assert (await smart.http.post("/auth/authorize", data=data, headers=own)).status_code == 200
    smart.http.cookies.clear()
    own = {"Origin": BASE}  # a browser without Fetch Metadata
    assert (await smart.http.post("/auth/authorize", data=data, headers=own)).status_code == 200
    proxied = {"Origin": BASE, "Host": "127.0.0.1:8080"}  # a proxy rewrote Host
    assert (await smart.http.post("/auth/authorize", data=data, headers=proxied)).status_code == 200
    assert SESSION_COOKIE in smart.http.cookies


# -- the session's lifetime, with a clock of the test's own ---------------------------

U1 = UserRecord("u1", "u1", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def sessions_on(smart: Smart, clock: Clock, issuer: str = f"{BASE}/auth") -> Sessions:
    config = AuthConfig(issuer=issuer, audience=AUD, session_idle=100, session_max=250)
    return Sessions(config, smart.store.auth, clock=clock)


async def test_a_session_ends_when_idle_and_at_its_absolute_limit(smart: Smart) -> None:
    clock = Clock()
    sessions = sessions_on(smart, clock)
    cookie = await sessions.begin(U1, clock.now, replacing=None)
    clock.now += 99
    assert await sessions.find(cookie) is not None  # used: the idle limit moves on
    clock.now += 99
    found = await sessions.find(cookie)
    assert found is not None and found.user_id == "u1"
    clock.now += 100  # 100 s idle
    assert await sessions.find(cookie) is None

    start = clock.now
    kept = await sessions.begin(U1, start, replacing=None)
    for _ in range(5):  # used every 60 s, never idle for long
        clock.now += 60
        if clock.now < start + 250:
            assert await sessions.find(kept) is not None
        else:
            assert await sessions.find(kept) is None


async def test_consents_are_kept_per_client_and_an_ended_session_is_not_brought_back(
    smart: Smart,
) -> None:
    clock = Clock()
    sessions = sessions_on(smart, clock)
    cookie = await sessions.begin(U1, clock.now, replacing=None)

    async def current() -> SignInSession:
        found = await sessions.find(cookie)
        assert found is not None
        return found

    await sessions.remember(await current(), Consent("app", ("openid",), ("openid",)))
    await sessions.remember(await current(), Consent("viewer", ("a",), ("a",)))
    newer = Consent("app", ("openid", "x"), ("x",))
    await sessions.remember(await current(), newer)
    kept = {c.client_id: c for c in (await current()).consents}
    assert kept == {"app": newer, "viewer": Consent("viewer", ("a",), ("a",))}
    await sessions.forget(await current(), "viewer")
    assert [c.client_id for c in (await current()).consents] == ["app"]
    # a consent decided in a tab while another tab signed out does not undo the sign-out
    stale = await current()
    await sessions.end(cookie)
    await sessions.remember(stale, Consent("late", ("b",), ("b",)))
    assert await smart.store.auth.get_session(digest(cookie)) is None


def test_the_cookie_under_an_https_issuer_is_a_host_cookie(smart: Smart) -> None:
    """Secure, Path=/ and the ``__Host-`` prefix: no sibling subdomain can plant it."""
    response = Response()
    sessions = sessions_on(smart, Clock(), issuer="https://pacs.example.org/radhub/auth")
    sessions.set_cookie(response, "v")
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith("__Host-radhub_signin=v;")
    assert {"secure", "path=/", "httponly", "samesite=lax"} <= attributes
    assert not [a for a in attributes if a.startswith(("max-age", "expires", "domain"))]
    assert sessions.cookie({"__Host-radhub_signin": "v", "radhub_signin": "w"}) == "v"
    plain = sessions_on(smart, Clock(), issuer="http://127.0.0.1:8080/radhub/auth")
    plain.set_cookie(response := Response(), "v")
    assert "path=/radhub/auth" in response.headers["set-cookie"].lower()


async def test_a_refused_sign_out_still_ends_the_session(smart: Smart) -> None:
    """Only the way back to the app is refused; the user asked to be signed out."""
    await signed_in(smart)
    cookie = smart.http.cookies[SESSION_COOKIE]
    params = {"client_id": "app", "post_logout_redirect_uri": "https://evil.example/"}
    refused = await smart.http.get("/auth/logout", params=params)
    assert refused.status_code == 400 and "signed out of radhub" in refused.text
    assert "location" not in refused.headers
    assert await smart.store.auth.get_session(digest(cookie)) is None
    silent, answered = await again(smart, prompt="none")
    assert answer(silent, answered)["error"] == "login_required"


async def test_an_id_token_hint_for_someone_else_is_not_answered_for_the_session(
    smart: Smart,
) -> None:
    """A shared workstation: rita's viewer tab renews silently after sam signed in on
    the same browser. Its id_token_hint names rita, so it must not get a code for sam."""
    ritas = str((await signed_in(smart))["id_token"])
    await smart.add_user("sam", "radiologist")
    sams = str((await smart.tokens(SCOPE, "sam"))["id_token"])  # signs in anew: sam's session
    flow, response = await again(smart, prompt="none", id_token_hint=ritas)
    assert answer(flow, response)["error"] == "login_required"
    _, page = await again(smart, id_token_hint=ritas)
    assert is_login_page(page), page.text
    flow, response = await again(smart, prompt="none", id_token_hint=sams)
    code = answer(flow, response)["code"]
    body = (await smart.exchange(flow, code)).json()
    sam = await smart.store.auth.get_user_by_name("sam")
    assert sam is not None and claims_of(body["id_token"])["sub"] == sam.id


async def test_a_hint_this_server_did_not_sign_is_refused(smart: Smart) -> None:
    ritas = str((await signed_in(smart))["id_token"])
    head, payload, signature = ritas.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    for hint in (forged, "not-a-jwt"):
        flow, response = await again(smart, prompt="none", id_token_hint=hint)
        found = answer(flow, response)
        assert found["error"] == "invalid_request" and "code" not in found


def test_the_limits_come_from_the_command_line_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*argv: str) -> Settings:
        return settings_from(build_parser().parse_args(["serve", *argv]))

    assert (parsed().session_idle, parsed().session_max) == (7200, 36000)
    monkeypatch.setenv("RADHUB_SESSION_IDLE", "900")
    chosen = parsed("--session-max", "28800")
    assert (chosen.session_idle, chosen.session_max) == (900, 28800)
    for bad in (("--session-idle", "10"), ("--session-max", "soon")):
        with pytest.raises(SystemExit):
            parsed(*bad)


async def test_the_server_keeps_to_the_limits_it_is_given(settings: Settings) -> None:
    application = create_app(replace(settings, session_idle=600, session_max=1800))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            smart = Smart(http, application.state.services.store)
            await smart.add_client()
            await smart.add_user("rita", "radiologist")
            before = time.time()
            assert (await smart.login(smart.request(SCOPE), "rita")).status_code == 200
            cookie = smart.http.cookies[SESSION_COOKIE]
            session = await smart.store.auth.get_session(digest(cookie))
            assert session is not None
            assert before + 600 <= session.expires_at <= time.time() + 600
            assert session.ends_at == pytest.approx(session.auth_time + 1800)


# -- what the review of this feature found --------------------------------------------


async def test_a_consent_page_left_open_does_not_outlive_a_sign_out(smart: Smart) -> None:
    """A shared workstation: a consent page the session showed in one tab, the user
    signs out in another, the next person clicks Allow: no code for the user."""
    await signed_in(smart)
    flow, page = await again(smart, prompt="consent")
    flow.consent = parse_form(page.text)
    await smart.http.get("/auth/logout", params={"client_id": "app"})
    late = await smart.approve(flow)
    assert late.status_code == 401 and "id=password" in late.text, late.text


async def test_a_consent_page_left_open_does_not_outlive_a_password_change(
    smart: Smart,
) -> None:
    await signed_in(smart)
    flow, page = await again(smart, prompt="consent")
    flow.consent = parse_form(page.text)
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    await smart.store.auth.update_user(user.id, {"hashed_password": password_helper().hash("n")})
    late = await smart.approve(flow)
    assert late.status_code == 401 and "id=password" in late.text, late.text


async def test_an_ehr_launch_always_shows_who_is_signed_in(
    smart: Smart, client: httpx.AsyncClient
) -> None:
    """The EHR knows its user; radhub must not answer its launch silently for whoever
    holds the browser's session, even with a consent remembered for the app."""
    await signed_in(smart)
    for pid in ("p1", "p2"):
        stored = await client.put(
            f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}
        )
        assert stored.status_code == 201, stored.text
    minted = Launches(smart.store.auth)
    scope = "openid launch patient/Patient.rs"
    first = smart.request(scope, launch=await minted.mint("app", "p1"))
    page = await smart.http.get("/auth/authorize", params=first.params)
    assert is_consent_page(page), page.text
    assert "id=signed-in-as>rita<" in page.text and "id=switch-user" in page.text
    first.consent = parse_form(page.text)
    assert "code" in answer(first, await smart.approve(first))
    # scopes the session's consent covers, sent with a launch (no "launch" scope needed)
    second = smart.request(SCOPE, launch=await minted.mint("app", "p2"))
    again_page = await smart.http.get("/auth/authorize", params=second.params)
    assert is_consent_page(again_page), again_page.text
    silent = smart.request(SCOPE, launch=await minted.mint("app", "p2"), prompt="none")
    refused = await smart.http.get("/auth/authorize", params=silent.params)
    assert answer(silent, refused)["error"] == "consent_required"
    # "Not you?" is the same request with prompt=login
    switch = parse_qs(urlsplit(_href(again_page.text, "switch-user")).query)
    assert switch["prompt"] == ["login"] and switch["launch"] == [second.params["launch"]]


async def test_a_picked_patient_is_picked_again_when_a_page_may_be_shown(
    smart: Smart, client: httpx.AsyncClient
) -> None:
    """Only a silent renewal reuses the patient picked before; a user opening the app
    picks (else a wrong patient would stick until sign-out)."""
    await smart.add_client()
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    for pid in ("p7", "p8"):
        stored = await client.put(
            f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}
        )
        assert stored.status_code == 201, stored.text
    scope = "openid launch/patient patient/Patient.rs"
    await smart.tokens(scope, "rita", patient="p7")
    _, page = await again(smart, scope)
    assert is_consent_page(page) and "id=patient" in page.text, page.text
    # the patient picked before may no longer be picked: no silent answer either
    await client.delete("/fhir/Patient/p7")
    silent, refused = await again(smart, scope, prompt="none")
    assert answer(silent, refused)["error"] == "consent_required"


@pytest.mark.parametrize(
    "change",
    [
        {"roles": ["radiographer"]},
        {"fhir_user": "Practitioner/other"},
        {"is_active": False},
    ],
    ids=["roles", "fhirUser", "deactivated"],
)
async def test_a_changed_account_ends_its_session(smart: Smart, change: dict[str, object]) -> None:
    await signed_in(smart)
    cookie = smart.http.cookies[SESSION_COOKIE]
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    await smart.store.auth.update_user(user.id, change)
    silent, refused = await again(smart, prompt="none")
    assert answer(silent, refused)["error"] == "login_required"
    # ended, not suspended: undoing the change (reactivating) does not bring it back
    await smart.store.auth.update_user(
        user.id, {"roles": list(user.roles), "fhir_user": user.fhir_user, "is_active": True}
    )
    assert await smart.store.auth.get_session(digest(cookie)) is None


async def test_a_locked_account_suspends_its_session(smart: Smart) -> None:
    """A lock (failed logins, perhaps by someone else) suspends; it lifts with the lock."""
    await signed_in(smart)
    user = await smart.store.auth.get_user_by_name("rita")
    assert user is not None
    await smart.store.auth.update_user(user.id, {"locked_until": time.time() + 600})
    silent, refused = await again(smart, prompt="none")
    assert answer(silent, refused)["error"] == "login_required"
    await smart.store.auth.update_user(user.id, {"locked_until": 0.0})
    flow, response = await again(smart, prompt="none")
    assert "code" in answer(flow, response)


@pytest.mark.parametrize("max_age", ["\u00b2", "9" * 5000, "-1", "1.5"])
async def test_a_max_age_that_is_not_seconds_is_invalid(smart: Smart, max_age: str) -> None:
    await signed_in(smart)
    flow, response = await again(smart, max_age=max_age)
    assert answer(flow, response)["error"] == "invalid_request"


async def test_max_age_counts_from_the_password_sign_in(smart: Smart) -> None:
    await signed_in(smart)
    await asyncio.sleep(1.2)
    _, page = await again(smart, max_age="1")
    assert is_login_page(page), page.text
    flow, response = await again(smart, max_age="600", prompt="none")
    assert "code" in answer(flow, response)


async def test_a_hint_that_is_not_an_id_token_for_this_app_is_refused(smart: Smart) -> None:
    tokens = await signed_in(smart)
    await smart.add_client("other")
    others = str((await smart.tokens(SCOPE, "rita", params={"client_id": "other"}))["id_token"])
    for hint in (str(tokens["access_token"]), others):
        flow, response = await again(smart, prompt="none", id_token_hint=hint)
        assert answer(flow, response)["error"] == "invalid_request"


async def test_signing_in_as_someone_other_than_the_hint_is_login_required(
    smart: Smart,
) -> None:
    ritas = str((await signed_in(smart))["id_token"])
    await smart.add_user("sam", "radiologist")
    flow = smart.request(SCOPE, id_token_hint=ritas, prompt="login")
    answered = await smart.login(flow, "sam")
    assert answer(flow, answered)["error"] == "login_required"
    assert SESSION_COOKIE not in smart.http.cookies


async def test_an_origin_of_another_scheme_is_another_site(smart: Smart) -> None:
    """Without Fetch Metadata, ``Origin`` must match the issuer's scheme too."""
    await smart.add_client()
    await smart.add_user("mallory", "radiologist")
    flow = smart.request(SCOPE)
    page = await smart.http.get("/auth/authorize", params=flow.params)
    data = {**parse_form(page.text).fields, "username": "mallory", "password": PASSWORD}
    sent = {"Origin": BASE.replace("http://", "https://"), "Host": "127.0.0.1:8080"}
    forged = await smart.http.post("/auth/authorize", data=data, headers=sent)
    assert forged.status_code == 403


async def patients(client: httpx.AsyncClient, *ids: str) -> None:
    for pid in ids:
        stored = await client.put(
            f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}
        )
        assert stored.status_code == 201, stored.text


def _href(page: str, element_id: str) -> str:
    found = re.search(rf'id={element_id} href="([^"]+)"', page)
    assert found is not None, page
    return html.unescape(found.group(1))
