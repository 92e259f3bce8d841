"""Auth data contract: clients, users, codes, refresh families, launches, sign-in sessions,
jtis, revocation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from fhir_server.storage.auth_port import (
    AuthorizationCode,
    AuthRecordExists,
    ClientRecord,
    Consent,
    GrantInfo,
    LaunchContext,
    RefreshToken,
    SignInSession,
    UserRecord,
)
from fhir_server.storage.base import Store

from .conftest import Backend


@pytest.fixture
def now() -> float:
    """Real time (TTL indexes act on it), taken when the test starts: a module
    constant went stale when the suite ran long and codes expired mid-run."""
    return float(int(time.time()))


GRANT = GrantInfo("g1", "app", "user-1", "patient/*.rs openid", patient="p1", roles=("patient",))


def user(id: str = "u1", name: str = "Alice") -> UserRecord:
    return UserRecord(
        id, name, "$argon2id$hash", roles=("radiologist",), fhir_user="Practitioner/1"
    )


async def test_clients_round_trip_and_replace(store: Store) -> None:
    client = ClientRecord(
        "app",
        "public",
        ("https://app/cb", "https://app/cb2"),
        "launch openid",
        post_logout_redirect_uris=("https://app/bye",),
    )
    await store.auth.put_client(client)
    assert await store.auth.get_client("app") == client
    changed = replace(client, kind="symmetric", secret_hash="h")
    await store.auth.put_client(changed)
    assert await store.auth.get_client("app") == changed
    assert await store.auth.delete_client("app")
    assert await store.auth.get_client("app") is None
    assert not await store.auth.delete_client("app")


async def test_clients_and_users_are_listed_in_order(store: Store) -> None:
    assert await store.auth.list_clients() == [] and await store.auth.list_users() == []
    for client_id in ("zeta", "alpha"):
        await store.auth.put_client(ClientRecord(client_id, "public"))
    assert [c.client_id for c in await store.auth.list_clients()] == ["alpha", "zeta"]
    await store.auth.add_user(user("u1", "carol"))
    await store.auth.add_user(user("u2", "bob"))
    assert await store.auth.list_users() == [user("u2", "bob"), user("u1", "carol")]


async def test_users_by_id_and_case_insensitive_name(store: Store) -> None:
    await store.auth.add_user(user())
    assert await store.auth.get_user("u1") == user()
    assert await store.auth.get_user_by_name("alice") == user()
    assert await store.auth.get_user_by_name("bob") is None
    with pytest.raises(AuthRecordExists):
        await store.auth.add_user(user("u2", "ALICE"))
    with pytest.raises(AuthRecordExists):
        await store.auth.add_user(user("u1", "carol"))


async def test_update_and_delete_user(store: Store, now: float) -> None:
    await store.auth.add_user(user())
    await store.auth.add_user(user("u2", "bob"))
    updated = await store.auth.update_user("u1", {"failed_logins": 3, "locked_until": now})
    assert updated is not None and (updated.failed_logins, updated.locked_until) == (3, now)
    renamed = await store.auth.update_user("u1", {"email": "alicia", "roles": ("admin",)})
    assert renamed is not None and renamed.roles == ("admin",)
    assert await store.auth.get_user_by_name("Alicia") == renamed
    with pytest.raises(AuthRecordExists):
        await store.auth.update_user("u1", {"email": "bob"})
    assert await store.auth.update_user("nobody", {"is_active": False}) is None
    await store.auth.delete_user("u1")
    assert await store.auth.get_user("u1") is None


async def test_code_is_taken_once(store: Store, now: float) -> None:
    code = AuthorizationCode("h1", GRANT, "https://app/cb", "challenge", now + 60, nonce="n")
    await store.auth.put_code(code)
    first = await store.auth.take_code("h1")
    assert first is not None and first.first_use and first.code == code
    replay = await store.auth.take_code("h1")
    assert replay is not None and not replay.first_use and replay.code == code
    assert await store.auth.take_code("unknown") is None


async def test_concurrent_redemptions_have_one_winner(store: Store, now: float) -> None:
    await store.auth.put_code(AuthorizationCode("h1", GRANT, "https://app/cb", "c", now + 60))
    results = await asyncio.gather(*(store.auth.take_code("h1") for _ in range(5)))
    assert sum(1 for r in results if r is not None and r.first_use) == 1


async def test_refresh_rotation_and_family_revocation(store: Store, now: float) -> None:
    await store.auth.put_refresh(RefreshToken("r1", GRANT, now + 3600))
    await store.auth.put_refresh(RefreshToken("r2", GRANT, now + 3600))
    other = replace(GRANT, grant_id="g2")
    await store.auth.put_refresh(RefreshToken("r3", other, now + 3600))
    taken = await store.auth.take_refresh("r1")
    assert taken is not None and taken.first_use and taken.refresh is not None
    assert taken.refresh.grant == GRANT
    again = await store.auth.take_refresh("r1")
    assert again is not None and not again.first_use
    assert again.refresh is not None and again.refresh.used

    await store.auth.record_issued("jti-a", "g1", now + 3600)
    await store.auth.record_issued("jti-b", "g2", now + 3600)
    await store.auth.revoke_grant("g1")
    r2 = await store.auth.get_refresh("r2")
    r3 = await store.auth.get_refresh("r3")
    assert r2 is not None and r2.revoked and not r2.used
    assert r3 is not None and not r3.revoked
    assert await store.auth.is_revoked("jti-a")
    assert not await store.auth.is_revoked("jti-b")
    assert await store.auth.get_refresh("nope") is None


async def test_revoke_single_access_token(store: Store, now: float) -> None:
    assert not await store.auth.is_revoked("jti-x")
    await store.auth.revoke_jti("jti-x", now + 60)
    await store.auth.revoke_jti("jti-x", now + 60)
    assert await store.auth.is_revoked("jti-x")


async def test_launch_context(store: Store, now: float) -> None:
    launch = LaunchContext("l1", "app", "p1", now + 600, encounter="e1")
    await store.auth.put_launch(launch)
    assert await store.auth.get_launch("l1") == launch
    assert await store.auth.get_launch("l2") is None


async def test_sign_in_session_round_trip_replace_and_delete(store: Store, now: float) -> None:
    session = SignInSession("s1", "u1", now - 5, now + 600, now + 3600)
    await store.auth.put_session(session)
    assert await store.auth.get_session("s1") == session
    consent = Consent("app", ("openid", "user/*.rs"), ("openid",), patient="p1")
    remembered = replace(session, consents=(consent,), expires_at=now + 900)
    await store.auth.put_session(remembered)
    assert await store.auth.get_session("s1") == remembered
    assert await store.auth.get_session("s2") is None
    await store.auth.delete_session("s1")
    assert await store.auth.get_session("s1") is None
    await store.auth.delete_session("s1")  # ending an ended session is no error


async def test_a_session_is_updated_in_place_and_never_brought_back(
    store: Store, now: float
) -> None:
    session = SignInSession("s1", "u1", now - 5, now + 600, now + 3600, account_stamp="p")
    await store.auth.put_session(session)
    consents = (Consent("app", ("openid", "x"), ("openid",)), Consent("b", ("y",), ("y",), "p1"))
    assert await store.auth.update_session("s1", {"expires_at": now + 900})
    assert await store.auth.update_session("s1", {"consents": consents})
    assert await store.auth.get_session("s1") == replace(
        session, expires_at=now + 900, consents=consents
    )
    await store.auth.purge(now + 700)  # the moved limit is the one purge goes by
    assert await store.auth.get_session("s1") is not None
    await store.auth.delete_session("s1")
    assert not await store.auth.update_session("s1", {"expires_at": now + 1200})
    assert await store.auth.get_session("s1") is None


async def test_a_users_sessions_are_listed_and_ended_together(store: Store, now: float) -> None:
    later = SignInSession("s-b", "u1", now - 5, now + 600, now + 3600)
    earlier = SignInSession("s-a", "u1", now - 50, now + 60, now + 3600, account_stamp="p")
    other = SignInSession("s-c", "u2", now - 9, now + 600, now + 3600)
    for session in (later, earlier, other):
        await store.auth.put_session(session)
    assert await store.auth.update_session("s-a", {"expires_at": now + 120})
    assert await store.auth.list_sessions("u1") == [replace(earlier, expires_at=now + 120), later]
    assert await store.auth.list_sessions("nobody") == []
    assert await store.auth.delete_sessions("u1") == 2
    assert await store.auth.list_sessions("u1") == []
    assert await store.auth.get_session("s-a") is None
    assert await store.auth.get_session("s-c") == other
    assert await store.auth.delete_sessions("u1") == 0


async def test_jti_used_once(store: Store, now: float) -> None:
    assert await store.auth.use_jti("app:j1", now + 300)
    assert not await store.auth.use_jti("app:j1", now + 300)
    assert await store.auth.use_jti("app:j2", now + 300)


async def test_purge_drops_only_expired(store: Store, now: float) -> None:
    await store.auth.put_code(AuthorizationCode("old", GRANT, "https://app/cb", "c", now - 1))
    await store.auth.put_code(AuthorizationCode("new", GRANT, "https://app/cb", "c", now + 60))
    await store.auth.use_jti("old-jti", now - 1)
    await store.auth.revoke_jti("old-rev", now - 1)
    await store.auth.put_session(SignInSession("old-s", "u1", now - 99, now - 1, now + 99))
    await store.auth.put_session(SignInSession("new-s", "u1", now - 99, now + 60, now + 99))
    await store.auth.purge(now)  # MongoDB's TTL index may have dropped some already
    assert await store.auth.purge(now) == 0
    assert await store.auth.take_code("old") is None
    assert await store.auth.take_code("new") is not None
    assert await store.auth.use_jti("old-jti", now + 60)
    assert await store.auth.get_session("old-s") is None
    assert await store.auth.get_session("new-s") is not None


async def test_auth_data_survives_restart(backend: Backend, store: Store) -> None:
    await store.auth.add_user(user())
    await store.auth.put_client(ClientRecord("app", "public"))
    await store.close()
    reopened = await backend.start()
    assert await reopened.auth.get_user_by_name("alice") == user()
    assert await reopened.auth.get_client("app") == ClientRecord("app", "public")
