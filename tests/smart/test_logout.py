"""The end-session endpoint (OpenID Connect RP-Initiated Logout 1.0): an app sends its
user to ``/auth/logout`` to sign out, and is sent back only to an address it registered."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import BASE, REDIRECT, Smart, audit_events, query_of

AFTER = "http://127.0.0.1:9999/signed-out"  # the app's registered post-logout address


async def id_token(smart: Smart, client_id: str = "app") -> str:
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    scope = "openid fhirUser user/Patient.rs"
    body = await smart.tokens(scope, "rita", params={"client_id": client_id})
    token: str = body["id_token"]
    return token


async def test_discovery_names_the_end_session_endpoint(smart: Smart) -> None:
    meta = (await smart.http.get("/auth/.well-known/openid-configuration")).json()
    assert meta["end_session_endpoint"] == f"{BASE}/auth/logout"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_registered_address_gets_the_user_back_with_the_state(
    smart: Smart, method: str
) -> None:
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    params = {
        "id_token_hint": await id_token(smart),
        "post_logout_redirect_uri": AFTER,
        "state": "s-1",
    }
    if method == "GET":
        response = await smart.http.get("/auth/logout", params=params)
    else:
        response = await smart.http.post("/auth/logout", data=params)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(AFTER + "?") and query_of(location) == {"state": "s-1"}
    assert response.headers["cache-control"] == "no-store"


async def test_client_id_alone_names_the_client(smart: Smart) -> None:
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    params = {"client_id": "app", "post_logout_redirect_uri": AFTER}
    response = await smart.http.get("/auth/logout", params=params)
    assert response.status_code == 302 and response.headers["location"] == AFTER


async def test_without_an_address_a_page_says_the_user_is_signed_out(smart: Smart) -> None:
    await smart.add_client()
    params = {"id_token_hint": await id_token(smart)}
    response = await smart.http.get("/auth/logout", params=params)
    assert response.status_code == 200 and "id=signed-out" in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("address", "registered"),
    [
        (AFTER, ()),  # nothing registered for signing out
        ("https://evil.example/", (AFTER,)),  # not the registered one
        (AFTER + "/more", (AFTER,)),  # exact match only
    ],
)
async def test_an_unregistered_address_is_never_redirected_to(
    smart: Smart, address: str, registered: tuple[str, ...]
) -> None:
    # the sign-in address is registered, but signing out needs its own registration
    await smart.add_client(redirect_uris=(REDIRECT, AFTER), post_logout_redirect_uris=registered)
    params = {"id_token_hint": await id_token(smart), "post_logout_redirect_uri": address}
    response = await smart.http.get("/auth/logout", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    assert "not registered" in response.text


async def test_an_address_without_a_client_is_refused(smart: Smart) -> None:
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    response = await smart.http.get("/auth/logout", params={"post_logout_redirect_uri": AFTER})
    assert response.status_code == 400 and "location" not in response.headers


async def test_a_hint_from_another_signer_or_for_another_client_is_refused(smart: Smart) -> None:
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    await smart.add_client("other", post_logout_redirect_uris=(AFTER,))
    now = int(time.time())
    claims = {"iss": f"{BASE}/auth", "sub": "rita", "aud": "app", "iat": now, "exp": now + 60}
    foreign = jwt.encode({"alg": "RS256"}, claims, RSAKey.generate_key(2048))
    mine = await id_token(smart)
    for params in (
        {"id_token_hint": foreign, "post_logout_redirect_uri": AFTER},
        {"id_token_hint": "not-a-jwt", "post_logout_redirect_uri": AFTER},
        {"id_token_hint": mine, "client_id": "other", "post_logout_redirect_uri": AFTER},
    ):
        response = await smart.http.get("/auth/logout", params=params)
        assert response.status_code == 400 and "location" not in response.headers, params


async def test_an_expired_hint_still_names_its_client(smart: Smart, app: FastAPI) -> None:
    """§2: the OP should accept an id_token_hint past its expiry (the app signs out late)."""
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    key = app.state.keyring.active_key
    hint = jwt.decode(await id_token(smart), key.jwk)
    expired = jwt.encode(hint.header, {**hint.claims, "exp": int(time.time()) - 3600}, key.jwk)
    params = {"id_token_hint": expired, "post_logout_redirect_uri": AFTER}
    response = await smart.http.get("/auth/logout", params=params)
    assert response.status_code == 302 and response.headers["location"] == AFTER


async def test_signing_out_is_audited(smart: Smart, client: httpx.AsyncClient) -> None:
    await smart.add_client(post_logout_redirect_uris=(AFTER,))
    for address in (AFTER, "https://x.example/"):
        params = {"client_id": "app", "post_logout_redirect_uri": address}
        await smart.http.get("/auth/logout", params=params)
    signed_out = await audit_events(client, {"subtype": "110123", "outcome": "0"}, "signed out")
    refused = await audit_events(client, {"subtype": "110123", "outcome": "4"}, "not registered")
    assert len(signed_out) == 1 and len(refused) == 1, (signed_out, refused)
