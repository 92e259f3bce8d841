"""An administrator sees and ends a user's sign-in sessions (``/auth/admin/users/{id}/
sessions``), and an account change ends them at once, through the real ASGI stack."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.storage.auth_port import SignInSession, UserRecord
from smart.secrets import digest
from smart.sessions import SESSION_COOKIE, account_stamp, signs_in
from tests.conftest import MintToken

from .conftest import Smart, audit_events, bearer
from .test_signin_session import again, answer, signed_in

USERS = "/auth/admin/users"


SECOND = "openid fhirUser user/Patient.rs"


async def rita_twice(smart: Smart) -> str:
    """rita signs in on two browsers (the fixture's client keeps the second's cookie)."""
    await signed_in(smart)
    await smart.tokens(SECOND, "rita")
    rita = await smart.store.auth.get_user_by_name("rita")
    assert rita is not None
    return rita.id


async def test_an_admin_lists_and_ends_a_users_sessions(
    smart: Smart, admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    rita = await rita_twice(smart)
    listed = await admin.get(f"{USERS}/{rita}/sessions")
    assert listed.status_code == 200, listed.text
    sessions = listed.json()
    assert len(sessions) == 2 and all(s["apps"] == ["app"] for s in sessions)
    assert sessions[0]["signedInAt"] <= sessions[1]["signedInAt"] < sessions[1]["endsBy"]
    stored = await smart.store.auth.list_sessions(rita)
    assert {s["id"] for s in sessions} == {s.session_hash[:16] for s in stored}

    # the first browser's session ends; this browser (the second) still signs her in
    this = digest(smart.http.cookies[SESSION_COOKIE])
    other_id = next(s["id"] for s in sessions if s["id"] != this[:16])
    assert (await admin.delete(f"{USERS}/{rita}/sessions/{other_id}")).status_code == 204
    assert [s.session_hash for s in await smart.store.auth.list_sessions(rita)] == [this]
    flow, response = await again(smart, SECOND, prompt="none")
    assert "code" in answer(flow, response)
    gone = await admin.delete(f"{USERS}/{rita}/sessions/{other_id}")
    assert gone.status_code == 404

    # everywhere: this browser is asked to sign in again
    everywhere = await admin.delete(f"{USERS}/{rita}/sessions")
    assert everywhere.status_code == 200 and everywhere.json() == {"ended": 1}
    flow, response = await again(smart, SECOND, prompt="none")
    assert answer(flow, response)["error"] == "login_required"
    assert (await admin.get(f"{USERS}/{rita}/sessions")).json() == []
    ended = await audit_events(
        client, {"subtype": "admin-sessions-end"}, "1 sign-in session ended", rita
    )
    assert ended and ended[0]["action"] == "D"


async def test_unknown_users_and_sessions_and_non_admins(
    smart: Smart, admin: httpx.AsyncClient, app: FastAPI, mint: MintToken
) -> None:
    rita = await rita_twice(smart)
    assert (await admin.get(f"{USERS}/nobody/sessions")).status_code == 404
    assert (await admin.delete(f"{USERS}/nobody/sessions")).status_code == 404
    assert (await admin.delete(f"{USERS}/{rita}/sessions/0123456789abcdef")).status_code == 404
    # a user granted everything but without the admin role sees nothing
    token = mint("user/*.cruds", roles=["radiologist"], fhir_user="Practitioner/x", subject="x")
    for method in ("GET", "DELETE"):
        refused = await smart.http.request(
            method, f"{USERS}/{rita}/sessions", headers=bearer(token)
        )
        assert refused.status_code == 403
    assert len(await smart.store.auth.list_sessions(rita)) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"active": False},
        {"password": "a brand new passphrase"},
        {"roles": ["radiologist", "admin"]},
        {"fhirUser": "Practitioner/other"},
    ],
)
async def test_an_account_change_ends_its_sessions_at_once(
    smart: Smart, admin: httpx.AsyncClient, change: dict[str, object]
) -> None:
    rita = await rita_twice(smart)
    patched = await admin.patch(f"{USERS}/{rita}", json=change)
    assert patched.status_code == 200, patched.text
    assert await smart.store.auth.list_sessions(rita) == []


async def test_an_unlock_or_no_change_keeps_the_sessions(
    smart: Smart, admin: httpx.AsyncClient
) -> None:
    rita = await rita_twice(smart)
    for change in ({"unlock": True}, {"roles": ["radiologist"]}, {}):
        assert (await admin.patch(f"{USERS}/{rita}", json=change)).status_code == 200
    assert len(await smart.store.auth.list_sessions(rita)) == 2


async def test_deleting_an_account_ends_its_sessions(
    smart: Smart, admin: httpx.AsyncClient
) -> None:
    rita = await rita_twice(smart)
    assert (await admin.delete(f"{USERS}/{rita}")).status_code == 204
    assert await smart.store.auth.list_sessions(rita) == []


def _user(**changes: object) -> UserRecord:
    user = UserRecord("u1", "rita", "$argon2id$hash", roles=("radiologist",))
    for name, value in changes.items():
        setattr(user, name, value)
    return user


SIGNED_IN = _user()
NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("user", "expires_at", "counts"),
    [
        (SIGNED_IN, NOW + 1, True),
        (SIGNED_IN, NOW, False),  # the idle limit reached
        (_user(is_active=False), NOW + 1, False),
        (_user(hashed_password="$argon2id$other"), NOW + 1, False),
        (_user(roles=("radiologist", "admin")), NOW + 1, False),
        (_user(fhir_user="Practitioner/9"), NOW + 1, False),
        (_user(id="u2"), NOW + 1, False),
        (_user(locked_until=NOW + 60), NOW + 1, True),  # a lock only suspends
    ],
)
def test_signs_in(user: UserRecord, expires_at: float, counts: bool) -> None:
    session = SignInSession(
        "h", "u1", NOW - 60, expires_at, NOW + 600, (), account_stamp(SIGNED_IN)
    )
    assert signs_in(session, user, NOW) is counts
