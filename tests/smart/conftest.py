"""Helpers for the SMART flow tests: registered clients and users on the app's
real store, PKCE pairs, and a browser-like driver of the login and consent forms."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI

from fhir_server.storage.auth_port import ClientRecord
from fhir_server.storage.base import Store
from smart.secrets import password_helper
from smart.users import Accounts
from tests.conftest import MintToken
from tests.smart_pages import PageForm, parse_form, pkce_pair  # parse_form: re-exported

BASE = "http://radhub.test"
ADMIN = "Practitioner/adm"  # the fhirUser of the ``admin`` fixture's token
AUD = f"{BASE}/fhir"
REDIRECT = "https://app.example.org/callback"
PASSWORD = "correct horse battery staple"


@dataclass
class Flow:
    """One authorization-code flow's request and what came back."""

    params: dict[str, str]
    verifier: str
    consent: PageForm | None = None
    redirect: dict[str, str] = field(default_factory=dict)


@dataclass
class Smart:
    """Drives the authorisation server like a browser and an app would."""

    http: httpx.AsyncClient
    store: Store

    async def add_client(self, client_id: str = "app", **kw: Any) -> ClientRecord:
        secret = kw.pop("secret", None)
        kind = kw.pop("kind", "symmetric" if secret else "public")
        if secret:
            kw["secret_hash"] = password_helper().hash(secret)
        kw.setdefault("redirect_uris", (REDIRECT,))
        client = ClientRecord(client_id, kind, **kw)
        await self.store.auth.put_client(client)
        return client

    async def add_user(
        self, name: str, role: str | Sequence[str], fhir_user: str | None = None
    ) -> str:
        roles = [role] if isinstance(role, str) else list(role)
        user = await Accounts(self.store.auth).add(name, PASSWORD, roles, fhir_user)
        return user.id

    def request(self, scope: str, client_id: str = "app", **extra: str) -> Flow:
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "scope": scope,
            "state": secrets.token_urlsafe(8),
            "aud": AUD,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        return Flow(params, verifier)

    async def login(self, flow: Flow, user: str, password: str = PASSWORD) -> httpx.Response:
        """GET the authorize page, then POST its login form, as a browser that has not
        signed in before (no sign-in session cookie)."""
        self.http.cookies.clear()
        page = await self.http.get("/auth/authorize", params=flow.params)
        assert page.status_code == 200, page.text
        fields = parse_form(page.text).fields
        response = await self.http.post(
            "/auth/authorize", data={**fields, "username": user, "password": password}
        )
        if response.status_code == 200:
            flow.consent = parse_form(response.text)
        return response

    async def approve(
        self, flow: Flow, grant: Sequence[str] | None = None, patient: str | None = None
    ) -> httpx.Response:
        assert flow.consent is not None
        data: dict[str, Any] = {**flow.consent.fields, "decision": "approve"}
        data["grant"] = list(flow.consent.checkboxes if grant is None else grant)
        if patient is not None:
            data["patient"] = patient
        response = await self.http.post("/auth/authorize", data=data)
        if response.status_code == 302:
            flow.redirect = query_of(response.headers["location"])
        return response

    async def code(self, flow: Flow, user: str, **approve: Any) -> str:
        """Log in, approve, and return the code (checking state and redirect)."""
        assert (await self.login(flow, user)).status_code == 200
        response = await self.approve(flow, **approve)
        assert response.status_code == 302, response.text
        assert response.headers["location"].startswith(REDIRECT + "?")
        assert flow.redirect["state"] == flow.params["state"]
        return flow.redirect["code"]

    async def exchange(self, flow: Flow, code: str, **extra: str) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": flow.verifier,
            "client_id": flow.params["client_id"],
            **extra,
        }
        return await self.http.post("/auth/token", data=data)

    async def tokens(self, scope: str, user: str, **kw: Any) -> dict[str, Any]:
        """The whole flow to a token response."""
        flow = self.request(scope, **kw.pop("params", {}))
        code = await self.code(flow, user, **kw)
        response = await self.exchange(flow, code)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


AUDIT_WAIT = 30.0  # seconds a busy machine may take to write a batch of AuditEvents


async def whole_trail(app: FastAPI, admin: httpx.AsyncClient) -> str:
    """Every AuditEvent, as JSON text, once the writer has written all it was given:
    a check that something is *not* in the trail means nothing before that."""
    deadline = time.monotonic() + AUDIT_WAIT
    while app.state.audit.unwritten():
        assert time.monotonic() < deadline, "the audit writer did not catch up"
        await asyncio.sleep(0.02)
    return (await admin.get("/fhir/AuditEvent", params={"_count": "500"})).text


async def audit_events(
    admin: httpx.AsyncClient, query: dict[str, str], *contains: str, timeout: float = AUDIT_WAIT
) -> list[dict[str, Any]]:
    """The AuditEvents an admin finds with ``query`` whose JSON holds every string of
    ``contains``, waiting (up to ``timeout``) for the background writer to store them."""
    deadline = time.monotonic() + timeout
    while True:
        response = await admin.get("/fhir/AuditEvent", params={"_count": "200", **query})
        assert response.status_code == 200, response.text
        events = [e["resource"] for e in response.json().get("entry", [])]
        found = [e for e in events if all(s in orjson.dumps(e).decode() for s in contains)]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


@pytest.fixture
async def smart(app: FastAPI, anon: httpx.AsyncClient) -> AsyncIterator[Smart]:
    yield Smart(anon, app.state.services.store)


@pytest.fixture
async def admin(app: FastAPI, mint: MintToken) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client carrying an admin user's token granted everything (the admin API's
    caller)."""
    token = mint("user/*.cruds", roles=["admin"], fhir_user=ADMIN, subject="adm")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=bearer(token)) as c:
        yield c
