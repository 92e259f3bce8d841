"""Every route of the app refuses a request without a valid token.

The routes are enumerated from the app ``create_app`` builds (FastAPI routes,
the plain Starlette FHIR routes and the ``/dicomweb`` router), so a route added
later is checked without touching this file: only the public endpoints below
may answer without a bearer token. Each route is called with every method it
serves, its path parameters filled with dummy values, once without a token and
once with each kind of bad token; all must be 401 with an RFC 6750 challenge.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

BASE = "http://radhub.test"

# (path template, method) pairs that need no bearer token, and why.
PUBLIC: dict[str, frozenset[str]] = {
    "/healthz": frozenset({"GET"}),  # liveness probe
    "/fhir/metadata": frozenset({"GET", "HEAD"}),  # CapabilityStatement (FHIR R4 §3.1.0.9)
    "/fhir/.well-known/smart-configuration": frozenset({"GET"}),  # SMART discovery
    "/auth/.well-known/openid-configuration": frozenset({"GET"}),  # OIDC Discovery §4
    "/auth/jwks": frozenset({"GET"}),  # public keys
    "/auth/authorize": frozenset({"GET", "POST"}),  # the login page (user authenticates there)
    "/auth/token": frozenset({"POST"}),  # client authentication, RFC 6749 §3.2
    "/auth/introspect": frozenset({"POST"}),  # client authentication, RFC 7662 §2.1
    "/auth/revoke": frozenset({"POST"}),  # client authentication, RFC 7009 §2.1
    "/auth/logout": frozenset({"GET", "POST"}),  # the user's browser, RP-Initiated Logout §2
}

# Dummy values for path parameters; none equals a literal segment of another route.
DUMMY = {
    "resource_type": "Patient",
    "id": "guard-1",
    "version_id": "1",
    "compartment_type": "Observation",
    "study": "1.2.826.0.1.1",
    "series": "1.2.826.0.1.1.1",
    "instance": "1.2.826.0.1.1.1.1",
    "frames": "1",
    "frame": "1",
    "tags": "7FE00010",
}

# Paths the enumeration must find, so a change in how routes are listed cannot
# silently empty the check.
EXPECTED = {
    "/fhir/{resource_type}/{id}",
    "/fhir/_history",
    "/fhir/Patient/{id}/$everything",
    "/dicomweb/studies",
    "/dicomweb/studies/{study}/metadata",
    "/dicomweb/wado",
    "/metrics",
    "/auth/launch",
    "/auth/admin/clients",
    "/auth/admin/users/{user_id}",
}

_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


@dataclass(frozen=True)
class Probe:
    method: str
    template: str
    url: str

    @property
    def public(self) -> bool:
        return self.method in PUBLIC.get(self.template, frozenset())


def _fill(template: str) -> str:
    return _PARAM.sub(lambda m: DUMMY.get(m.group(1), "dummy"), template)


def probes(app: FastAPI) -> Iterator[Probe]:
    """One probe per (route, method) of ``app``; a mount is probed below its prefix."""
    for route in iter_route_contexts(app.router.routes):
        template = str(route.path_format or route.path)
        if isinstance(route.original_route, Mount):
            yield Probe("GET", template, _fill(template.rstrip("/") + "/probe"))
            continue
        for method in sorted(route.methods or {"GET"}):
            yield Probe(method, template, _fill(template))


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned_token() -> str:
    """A well-formed ``alg: none`` token with claims this server would otherwise accept."""
    now = int(time.time())
    claims = {
        "iss": f"{BASE}/auth",
        "aud": f"{BASE}/fhir",
        "sub": "intruder",
        "iat": now,
        "exp": now + 600,
        "jti": "guard",
        "scope": "system/*.cruds",
    }
    return f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}."


BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "no token": {},
    "garbage token": {"Authorization": "Bearer garbage-0123456789"},
    "malformed header": {"Authorization": "Bearer two words"},
    "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "alg none": {"Authorization": f"Bearer {_unsigned_token()}"},
}


async def unguarded(app: FastAPI) -> list[str]:
    """Every non-public probe that did not answer 401 with a Bearer challenge."""
    failures: list[str] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        for probe in probes(app):
            if probe.public:
                continue
            for label, headers in BAD_CREDENTIALS.items():
                response = await http.request(
                    probe.method,
                    probe.url,
                    headers={**headers, "Content-Type": "application/fhir+json"},
                    content=b'{"resourceType": "Patient"}'
                    if probe.method in ("POST", "PUT", "PATCH")
                    else None,
                )
                challenge = response.headers.get("www-authenticate", "")
                if response.status_code != 401 or not challenge.startswith("Bearer "):
                    failures.append(
                        f"{probe.method} {probe.url} ({label}): {response.status_code} "
                        f"{challenge!r}"
                    )
    return failures


def test_enumeration_finds_every_kind_of_route(app: FastAPI) -> None:
    templates = {p.template for p in probes(app)}
    assert EXPECTED <= templates, EXPECTED - templates
    stale = set(PUBLIC) - templates
    assert not stale, f"allow-listed paths that no longer exist: {stale}"


async def test_every_route_refuses_a_request_without_a_valid_token(app: FastAPI) -> None:
    failures = await unguarded(app)
    assert not failures, "\n".join(failures)


async def test_a_new_unguarded_route_is_caught(app: FastAPI) -> None:
    @app.get("/admin/leak")
    async def leak() -> PlainTextResponse:
        return PlainTextResponse("secret")

    failures = await unguarded(app)
    assert any(f.startswith("GET /admin/leak ") for f in failures), failures


@pytest.mark.parametrize("path", ["/healthz", "/fhir/metadata", "/auth/jwks"])
async def test_public_endpoints_answer_without_a_token(anon: httpx.AsyncClient, path: str) -> None:
    assert (await anon.get(path)).status_code == 200
