"""Expired auth records are dropped while the server runs (smart.housekeeping): without
it, SQLite kept a row for every access token issued and every sign-in, for ever."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI

from fhir_server.storage.auth_port import AuthorizationCode, GrantInfo, SignInSession
from fhir_server.storage.base import Store
from smart.housekeeping import AuthPurge

GRANT = GrantInfo("g1", "app", "u1", "user/*.rs")


async def _gone(store: Store, code: str, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await store.auth.get_session(code) is None:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_the_loop_drops_what_expired_and_keeps_the_rest(app: FastAPI) -> None:
    store: Store = app.state.services.store
    now = time.time() + 1e6  # beyond the reach of the app's own loop, on the real clock
    clock = [now]
    await store.auth.put_session(SignInSession("old", "u1", now - 99, now - 1, now + 9))
    await store.auth.put_session(SignInSession("new", "u1", now - 99, now + 60, now + 99))
    await store.auth.put_code(AuthorizationCode("c-new", GRANT, "https://app/cb", "x", now + 60))
    purge = AuthPurge(store.auth, interval=0.05, clock=lambda: clock[0])
    purge.start()
    try:
        assert await _gone(store, "old")  # at start
        assert await store.auth.get_session("new") is not None
        clock[0] = now + 61  # then on its next round
        assert await _gone(store, "new")
        assert (await store.auth.take_code("c-new")) is None
    finally:
        await purge.stop()


async def test_stopping_does_not_wait_out_the_interval(app: FastAPI) -> None:
    purge = AuthPurge(app.state.services.store.auth, interval=3600)
    purge.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(purge.stop(), timeout=5)


async def test_the_server_runs_the_loop(app: FastAPI) -> None:
    del app  # its lifespan is running
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "radhub-auth-purge" in names
