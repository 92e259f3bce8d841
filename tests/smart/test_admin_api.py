"""The admin API for clients and users (``/auth/admin``), through the real ASGI stack:
who may call it, what it validates, secrets shown once and stored hashed, and an
audit record for every call."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from joserfc.jwk import RSAKey

from fhir_server.audit import SECURITY_ALERT, SECURITY_CONFIGURATION, USER_ATTRIBUTES_CHANGED
from smart.admin_models import MAX_SCOPE_LENGTH
from smart.users import Accounts, is_username
from tests.conftest import MintToken

from .conftest import ADMIN, BASE, PASSWORD, REDIRECT, Smart, audit_events, bearer, whole_trail

CLIENTS = "/auth/admin/clients"
USERS = "/auth/admin/users"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def backend_token(http: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    return await http.post("/auth/token", data=data, headers=basic(client_id, secret))


CONFIDENTIAL = {
    "client_id": "billing",
    "client_name": "Billing",
    "token_endpoint_auth_method": "client_secret_basic",
    "redirect_uris": [],
    "scope": "system/Patient.rs",
}


# -- who may call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "roles"),
    [
        ("user/*.cruds", ["radiologist"]),  # not an admin
        ("user/*.rs", ["admin"]),  # an admin, but the app was not granted everything
        ("system/*.cruds", []),  # a backend or `radhub token`: no user, no role
    ],
    ids=["radiologist", "admin-narrow-grant", "system"],
)
async def test_only_an_admin_granted_everything(
    anon: httpx.AsyncClient,
    mint: MintToken,
    client: httpx.AsyncClient,
    scope: str,
    roles: list[str],
) -> None:
    token = mint(scope, roles=roles, subject="someone")
    for method, url in [("GET", CLIENTS), ("POST", USERS), ("DELETE", f"{CLIENTS}/x")]:
        response = await anon.request(method, url, headers=bearer(token), json={})
        assert response.status_code == 403, response.text
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    refused = await audit_events(client, {"subtype": "admin-user-create", "outcome": "4"})
    assert refused and refused[0]["type"] == SECURITY_ALERT


async def test_an_admin_signed_in_through_smart(smart: Smart) -> None:
    """The whole road: an admin user, the code flow, then the admin API."""
    await smart.add_client()
    await smart.add_user("root", "admin", ADMIN)
    tokens = await smart.tokens("openid fhirUser user/*.cruds", "root")
    listed = await smart.http.get(CLIENTS, headers=bearer(tokens["access_token"]))
    assert listed.status_code == 200, listed.text
    assert [c["client_id"] for c in listed.json()] == ["app"]


# -- clients --------------------------------------------------------------------------


async def test_client_secret_shown_once_stored_hashed_and_working(
    admin: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await admin.post(CLIENTS, json=CONFIDENTIAL)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    secret = body["client_secret"]
    assert len(secret) >= 43 and body["token_endpoint_auth_method"] == "client_secret_basic"
    stored = await app.state.services.store.auth.get_client("billing")
    assert stored.secret_hash.startswith("$argon2id$") and secret not in stored.secret_hash
    for url in (f"{CLIENTS}/billing", CLIENTS):
        shown = await admin.get(url)
        assert shown.status_code == 200 and secret not in shown.text
        assert '"client_secret"' not in shown.text
    assert (await backend_token(admin, "billing", secret)).status_code == 200
    assert (await backend_token(admin, "billing", "guess")).status_code == 401
    # a new secret replaces the old one
    rotated = await admin.post(f"{CLIENTS}/billing/secret")
    assert rotated.status_code == 200
    assert (await backend_token(admin, "billing", secret)).status_code == 401
    assert (
        await backend_token(admin, "billing", rotated.json()["client_secret"])
    ).status_code == 200
    # audited, with the DICOM codes and the admin as agent, never the secret
    events = await audit_events(client, {"subtype": "admin-client-create"}, ADMIN, "billing")
    assert events and events[0]["subtype"][0] == SECURITY_CONFIGURATION
    assert events[0]["outcome"] == "0" and events[0]["action"] == "C"
    await audit_events(client, {"subtype": "admin-client-update"}, "secret replaced")
    trail = await whole_trail(app, client)
    assert secret not in trail and rotated.json()["client_secret"] not in trail


async def test_public_and_jwks_clients_read_update_delete(admin: httpx.AsyncClient) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    public_jwk = key.as_dict(private=False)
    spa = {
        "client_id": "spa",
        "token_endpoint_auth_method": "none",
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": [REDIRECT + "/bye"],
    }
    bulk = {
        "client_id": "bulk",
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public_jwk]},
        "scope": "system/*.rs",
    }
    for metadata in (spa, bulk):
        created = await admin.post(CLIENTS, json=metadata)
        assert created.status_code == 201, created.text
        assert "client_secret" not in created.json()
    assert (await admin.get(f"{CLIENTS}/bulk")).json()["jwks"]["keys"][0]["kid"] == "k1"
    shown = (await admin.get(f"{CLIENTS}/spa")).json()
    assert shown["post_logout_redirect_uris"] == [REDIRECT + "/bye"]
    listed = await admin.get(CLIENTS)
    assert [c["client_id"] for c in listed.json()] == ["bulk", "spa"]
    changed = {**spa, "redirect_uris": [REDIRECT, "http://127.0.0.1:5000/cb"], "scope": "launch"}
    updated = await admin.put(f"{CLIENTS}/spa", json=changed)
    assert updated.status_code == 200, updated.text
    assert (await admin.get(f"{CLIENTS}/spa")).json()["redirect_uris"][1].startswith("http://127")
    other_method = await admin.put(f"{CLIENTS}/spa", json={**CONFIDENTIAL, "client_id": "spa"})
    assert other_method.json()["error"] == "invalid_client_metadata"
    assert (await admin.delete(f"{CLIENTS}/spa")).status_code == 204
    assert (await admin.get(f"{CLIENTS}/spa")).status_code == 404
    assert (await admin.delete(f"{CLIENTS}/spa")).status_code == 404


def _private_jwks() -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    return {"keys": [key.as_dict(private=True)]}


BAD_CLIENTS: dict[str, tuple[dict[str, Any], str]] = {
    "http-redirect": ({"redirect_uris": ["http://app.example.org/cb"]}, "invalid_redirect_uri"),
    "relative-redirect": ({"redirect_uris": ["/cb"]}, "invalid_redirect_uri"),
    "fragment": ({"redirect_uris": [REDIRECT + "#x"]}, "invalid_redirect_uri"),
    "http-post-logout": (
        {"post_logout_redirect_uris": ["http://app.example.org/bye"]},
        "invalid_redirect_uri",
    ),
    "post-logout-not-a-list": ({"post_logout_redirect_uris": REDIRECT}, "invalid_client_metadata"),
    "public-without-redirect": (
        {"token_endpoint_auth_method": "none"},
        "invalid_redirect_uri",
    ),
    "unknown-method": (
        {"token_endpoint_auth_method": "tls_client_auth"},
        "invalid_client_metadata",
    ),
    "bad-scope": ({"scope": "system/*.everything"}, "invalid_client_metadata"),
    "keys-for-secret-client": ({"jwks_uri": "https://k.example.org/j"}, "invalid_client_metadata"),
    "jwt-without-keys": (
        {"token_endpoint_auth_method": "private_key_jwt"},
        "invalid_client_metadata",
    ),
    "jwt-private-key": (
        {"token_endpoint_auth_method": "private_key_jwt", "jwks": _private_jwks()},
        "invalid_client_metadata",
    ),
    "jwt-plain-http-uri": (
        {"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://k.example.org/j"},
        "invalid_client_metadata",
    ),
    "bad-client-id": ({"client_id": "a b"}, "invalid_client_metadata"),
    "not-a-list": ({"redirect_uris": REDIRECT}, "invalid_client_metadata"),
}


@pytest.mark.parametrize("case", BAD_CLIENTS.values(), ids=BAD_CLIENTS.keys())
async def test_bad_client_metadata(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, case: tuple[dict[str, Any], str]
) -> None:
    metadata, error = case
    response = await admin.post(CLIENTS, json={**CONFIDENTIAL, **metadata})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    assert (await admin.get(CLIENTS)).json() == []
    assert await audit_events(client, {"subtype": "admin-client-create", "outcome": "4"}, error)


async def test_a_taken_client_id_is_a_conflict(admin: httpx.AsyncClient) -> None:
    assert (await admin.post(CLIENTS, json=CONFIDENTIAL)).status_code == 201
    again = await admin.post(CLIENTS, json=CONFIDENTIAL)
    assert again.status_code == 409 and "client_secret" not in again.text


async def test_a_generated_client_id(admin: httpx.AsyncClient) -> None:
    metadata = {k: v for k, v in CONFIDENTIAL.items() if k != "client_id"}
    created = await admin.post(CLIENTS, json=metadata)
    assert created.status_code == 201
    client_id = created.json()["client_id"]
    assert (await admin.get(f"{CLIENTS}/{client_id}")).status_code == 200


# -- users ----------------------------------------------------------------------------


async def test_user_lifecycle(
    admin: httpx.AsyncClient, smart: Smart, client: httpx.AsyncClient, app: FastAPI
) -> None:
    await smart.add_client()
    wanted = {
        "username": "rita",
        "password": PASSWORD,
        "roles": ["radiologist"],
        "fhirUser": "Practitioner/7",
    }
    created = await admin.post(USERS, json=wanted)
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["roles"] == ["radiologist"] and user["active"] and not user["locked"]
    assert "password" not in created.text and "argon2" not in created.text
    assert created.headers["location"] == f"{USERS}/{user['id']}"
    assert (await admin.get(f"{USERS}/{user['id']}")).json() == user
    assert [u["username"] for u in (await admin.get(USERS)).json()] == ["rita"]
    # she signs in through the real login form
    assert (await smart.login(smart.request("user/*.rs"), "rita")).status_code == 200
    tokens = await smart.tokens("user/*.rs offline_access", "rita")

    # disabled: no sign-in, and her refresh token stops working
    disabled = await admin.patch(f"{USERS}/{user['id']}", json={"active": False})
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    assert (await smart.login(smart.request("user/*.rs"), "rita")).status_code != 200
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    refused = await smart.http.post("/auth/token", data={**refresh, "client_id": "app"})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"

    # re-enabled with a new password
    new_password = "another long passphrase"
    changes = {"active": True, "password": new_password, "roles": ["radiologist", "technologist"]}
    patched = await admin.patch(f"{USERS}/{user['id']}", json=changes)
    assert patched.status_code == 200 and patched.json()["roles"] == ["radiologist", "technologist"]
    assert (await smart.login(smart.request("user/*.rs"), "rita")).status_code != 200
    page = await smart.login(smart.request("user/*.rs"), "rita", new_password)
    assert page.status_code == 200

    assert (await admin.delete(f"{USERS}/{user['id']}")).status_code == 204
    assert (await admin.get(f"{USERS}/{user['id']}")).status_code == 404
    events = await audit_events(client, {"subtype": "admin-user-update"}, "is_active")
    assert events and events[0]["subtype"][0] == USER_ATTRIBUTES_CHANGED
    trail = await whole_trail(app, client)
    assert PASSWORD not in trail and new_password not in trail
    assert await audit_events(client, {"subtype": "admin-user-delete", "outcome": "0"}, ADMIN)


async def test_unlock_a_locked_account(admin: httpx.AsyncClient, smart: Smart) -> None:
    await smart.add_client()
    user_id = await smart.add_user("pat", "patient", "Patient/p1")
    for _ in range(5):
        await smart.login(smart.request("patient/*.rs"), "pat", "wrong password!")
    assert (await admin.get(f"{USERS}/{user_id}")).json()["locked"] is True
    unlocked = await admin.patch(f"{USERS}/{user_id}", json={"unlock": True})
    assert unlocked.json()["locked"] is False
    assert (await smart.login(smart.request("patient/*.rs"), "pat")).status_code == 200


BAD_USERS: dict[str, dict[str, Any]] = {
    "unknown-role": {"roles": ["superuser"]},
    "no-role": {"roles": []},
    "short-password": {"password": "short"},
    "bad-fhir-user": {"fhirUser": "Organization/1"},
    "patient-without-patient-record": {"roles": ["patient"], "fhirUser": "Practitioner/1"},
    "patient-and-admin": {"roles": ["patient", "admin"], "fhirUser": "Patient/1"},
    "practitioner-as-patient": {"roles": ["radiologist"], "fhirUser": "Patient/1"},
    "empty-name": {"username": ""},
}


@pytest.mark.parametrize("changes", BAD_USERS.values(), ids=BAD_USERS.keys())
async def test_bad_users(admin: httpx.AsyncClient, changes: dict[str, Any]) -> None:
    wanted = {"username": "u", "password": PASSWORD, "roles": ["scheduler"], **changes}
    response = await admin.post(USERS, json=wanted)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert (await admin.get(USERS)).json() == []


async def test_a_taken_user_name_and_an_unknown_user(admin: httpx.AsyncClient) -> None:
    wanted = {"username": "sam", "password": PASSWORD, "roles": ["scheduler"]}
    assert (await admin.post(USERS, json=wanted)).status_code == 201
    assert (await admin.post(USERS, json={**wanted, "username": "SAM"})).status_code == 409
    assert (await admin.patch(f"{USERS}/nobody", json={"active": False})).status_code == 404
    assert (await admin.post(USERS, content=b"{not json")).status_code == 400


async def test_secrets_never_reach_the_log(
    admin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await admin.post(CLIENTS, json=CONFIDENTIAL)
    user = {"username": "x", "password": PASSWORD, "roles": ["scheduler"]}
    assert (await admin.post(USERS, json=user)).status_code == 201
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert created.json()["client_secret"] not in logged and PASSWORD not in logged


def test_every_admin_route_is_in_the_openapi_document(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    assert {CLIENTS, f"{CLIENTS}/{{client_id}}", USERS, f"{USERS}/{{user_id}}"} <= set(paths)
    assert orjson.dumps(paths[f"{USERS}/{{user_id}}"]).decode().count("operationId") == 3


PUBLIC = {"token_endpoint_auth_method": "none", "redirect_uris": ["https://a.example/cb"]}


@pytest.mark.parametrize(
    ("client", "error"),
    [
        ({**PUBLIC, "client_id": 123}, "invalid_client_metadata"),
        (
            {**PUBLIC, "client_id": "x1", "redirect_uris": ["http://[::1/cb"]},
            "invalid_redirect_uri",
        ),
        (
            {**PUBLIC, "client_id": "x2", "redirect_uris": ["https://a.example:99999/cb"]},
            "invalid_redirect_uri",
        ),
        ({**PUBLIC, "client_id": "x3", "client_name": "\ud800"}, "invalid_request"),
        (
            {
                "client_id": "x4",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks_uri": "http://[::1",
            },
            "invalid_client_metadata",
        ),
    ],
)
async def test_odd_client_metadata_is_a_400(
    admin: httpx.AsyncClient, client: dict[str, Any], error: str
) -> None:
    """Each was a 500, with no audit record: a number for a client id, URLs that
    urlsplit refuses, a lone surrogate that JSON parses and no store can keep."""
    body = _escaped_json(client)  # orjson refuses to write a lone surrogate
    response = await admin.post(CLIENTS, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == error


def _escaped_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # "\ud800" as JSON writes it


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
)
async def test_json_nested_past_the_parser_is_a_400(admin: httpx.AsyncClient, body: bytes) -> None:
    for path in (CLIENTS, USERS):
        response = await admin.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"


async def test_a_constrained_scope_is_not_every_right(app: FastAPI, mint: MintToken) -> None:
    """The admin API needs user/*.cruds with no constraint: ``?category=`` narrows it."""
    token = mint("user/*.cruds?category=foo", roles=["admin"], fhir_user=ADMIN, subject="adm")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=bearer(token)) as c:
        assert (await c.get(USERS)).status_code == 403


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("rita", True),
        ("dr.rita@example.org", True),
        ("Zoë Ōkubo", True),  # any script, spaces inside
        ("", False),
        (" rita", False),
        ("rita ", False),
        ("u4\x00x", False),  # a NUL was accepted
        ("tab\there", False),
        ("line\nbreak", False),
        ("\u2028", False),  # a line separator is not printable either
    ],
)
def test_is_username(name: str, valid: bool) -> None:
    assert is_username(name) is valid


@pytest.mark.parametrize("name", ["u4\x00x", "tab\there", " lead"])
async def test_a_username_with_control_characters_is_a_400(
    admin: httpx.AsyncClient, name: str
) -> None:
    body = {"username": name, "password": "correct horse battery", "roles": ["radiologist"]}
    response = await admin.post(USERS, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert all(u["username"] != name for u in (await admin.get(USERS)).json())


async def test_accounts_refuse_such_a_name_too(smart: Smart) -> None:
    """The rule lives with the accounts, so ``radhub user add`` keeps it as well."""
    with pytest.raises(ValueError, match="printable"):
        await Accounts(smart.store.auth).add("u\x00", "correct horse battery", ["radiologist"])


async def test_a_scope_is_bounded_and_quoted_short(admin: httpx.AsyncClient) -> None:
    """A refused scope is quoted in the answer and in the audit trail: a 5 MB one
    came back whole in both."""
    huge = await admin.post(CLIENTS, json={**PUBLIC, "client_id": "s1", "scope": "x" * 5_000_000})
    assert huge.status_code == 400
    assert huge.json()["error_description"] == f"scope: at most {MAX_SCOPE_LENGTH} characters"
    odd = "user/" + "Q" * 1000
    refused = await admin.post(CLIENTS, json={**PUBLIC, "client_id": "s2", "scope": odd})
    assert refused.status_code == 400
    description = refused.json()["error_description"]
    assert odd[:100] + "..." in description and len(description) < 300
