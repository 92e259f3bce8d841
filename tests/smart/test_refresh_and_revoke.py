"""Refresh with rotation and subset scopes; introspection (RFC 7662) and
revocation (RFC 7009)."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from .conftest import Smart, bearer

SECRET = "s3cret-for-the-app"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def refresh(smart: Smart, token: str, **extra: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return await smart.http.post("/auth/token", data=data, headers=basic("app", SECRET))


async def confidential(smart: Smart) -> None:
    await smart.add_client(secret=SECRET)
    await smart.add_client("rs", secret="resource-server-secret")
    await smart.add_user("rita", "radiologist")


async def code_tokens(smart: Smart, scope: str) -> dict[str, Any]:
    flow = smart.request(scope)
    code = await smart.code(flow, "rita")
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": flow.params["redirect_uri"],
        "code_verifier": flow.verifier,
    }
    response = await smart.http.post("/auth/token", data=data, headers=basic("app", SECRET))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_refresh_rotates_and_reuse_revokes_the_family(smart: Smart) -> None:
    await confidential(smart)
    first = await code_tokens(smart, "user/Patient.rs user/Observation.rs offline_access")
    second = await refresh(smart, first["refresh_token"])
    assert second.status_code == 200 and second.headers["cache-control"] == "no-store"
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["scope"] == first["scope"]
    reuse = await refresh(smart, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # the whole family is gone: the rotated refresh token and the access tokens
    assert (await refresh(smart, rotated["refresh_token"])).json()["error"] == "invalid_grant"
    token = bearer(rotated["access_token"])
    assert (await smart.http.get("/fhir/Patient", headers=token)).status_code == 401


async def test_refresh_may_narrow_but_not_widen(smart: Smart) -> None:
    await confidential(smart)
    first = await code_tokens(smart, "user/Patient.rs user/Observation.rs offline_access")
    narrowed = await refresh(smart, first["refresh_token"], scope="user/Patient.r")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "user/Patient.r"
    # the family keeps the original grant: a later refresh may ask all of it again
    again = await refresh(smart, narrowed.json()["refresh_token"])
    assert again.json()["scope"] == first["scope"]
    wider = await refresh(smart, again.json()["refresh_token"], scope="user/*.cruds")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


async def test_refresh_needs_the_same_client(smart: Smart) -> None:
    await confidential(smart)
    first = await code_tokens(smart, "user/Patient.rs offline_access")
    data = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    other = await smart.http.post(
        "/auth/token", data=data, headers=basic("rs", "resource-server-secret")
    )
    assert other.json()["error"] == "invalid_grant"
    wrong_secret = await smart.http.post("/auth/token", data=data, headers=basic("app", "nope"))
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    post = await smart.http.post(
        "/auth/token", data={**data, "client_id": "app", "client_secret": SECRET}
    )
    assert post.status_code == 200  # client_secret_post


async def test_introspection_of_access_and_refresh_tokens(smart: Smart) -> None:
    await confidential(smart)
    tokens = await code_tokens(smart, "user/Patient.rs offline_access")
    rs = basic("rs", "resource-server-secret")
    access = await smart.http.post(
        "/auth/introspect", data={"token": tokens["access_token"]}, headers=rs
    )
    answer = access.json()
    assert answer["active"] is True and answer["client_id"] == "app"
    assert answer["scope"] == "user/Patient.rs offline_access" and answer["exp"] > 0
    refresh_answer = (
        await smart.http.post(
            "/auth/introspect", data={"token": tokens["refresh_token"]}, headers=rs
        )
    ).json()
    assert refresh_answer["active"] is True and refresh_answer["token_type"] == "refresh_token"
    junk = await smart.http.post("/auth/introspect", data={"token": "junk"}, headers=rs)
    assert junk.json() == {"active": False}
    anonymous = await smart.http.post("/auth/introspect", data={"token": "junk"})
    assert anonymous.status_code == 401


async def test_revoking_access_and_refresh_tokens(smart: Smart) -> None:
    await confidential(smart)
    tokens = await code_tokens(smart, "user/Patient.rs offline_access")
    app = basic("app", SECRET)
    token = bearer(tokens["access_token"])
    assert (await smart.http.get("/fhir/Patient", headers=token)).status_code == 200
    revoked = await smart.http.post(
        "/auth/revoke", data={"token": tokens["access_token"]}, headers=app
    )
    assert revoked.status_code == 200
    assert (await smart.http.get("/fhir/Patient", headers=token)).status_code == 401
    rs = basic("rs", "resource-server-secret")
    answer = await smart.http.post(
        "/auth/introspect", data={"token": tokens["access_token"]}, headers=rs
    )
    assert answer.json() == {"active": False}
    await smart.http.post("/auth/revoke", data={"token": tokens["refresh_token"]}, headers=app)
    assert (await refresh(smart, tokens["refresh_token"])).json()["error"] == "invalid_grant"
    unknown = await smart.http.post("/auth/revoke", data={"token": "unknown"}, headers=app)
    assert unknown.status_code == 200
