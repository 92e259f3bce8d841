"""``private_key_jwt`` with keys published at a ``jwks_uri``, served by a real local
HTTP listener: the composition root's fetcher, key rotation at the URL (a new
``kid`` makes the server refetch, at most once per interval), and a URL that
cannot be reached (``invalid_client``, audited)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_server.access import AccessPolicy, PatientCompartment
from fhir_server.audit import GET_ACCESS_TOKEN, USER_AUTHENTICATION
from smart.clients import JWT_BEARER
from smart.config import AuthConfig
from smart.jwks_fetch import HttpJwksFetcher, JwksUnavailable, check_jwks_uri
from smart.server import AuthServer
from smart.tokens import JwtTokenVerifier

from .conftest import BASE, Smart, audit_events, bearer

TOKEN_URL = f"{BASE}/auth/token"


class JwksHost:
    """A real HTTP listener on loopback publishing a JWK Set the test can change."""

    def __init__(self) -> None:
        self.keys: list[RSAKey | ECKey] = []
        self.body: bytes | None = None  # served instead of the keys when set
        self.status = 200
        self.hits = 0
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                host.hits += 1
                body = (
                    host.body
                    or json.dumps({"keys": [k.as_dict(private=False) for k in host.keys]}).encode()
                )
                self.send_response(host.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def jwks_host() -> Iterator[JwksHost]:
    host = JwksHost()
    yield host
    host.close()


def new_key(kid: str, alg: str = "RS384") -> RSAKey | ECKey:
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg})
    return ECKey.generate_key("P-384", parameters={"kid": kid, "alg": alg})


def signed(key: RSAKey | ECKey, client_id: str = "bulk") -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    alg = key.alg or "RS384"
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


async def ask(http: httpx.AsyncClient, assertion: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
    return await http.post("/auth/token", data=data)


async def register(smart: Smart, uri: str, client_id: str = "bulk") -> None:
    await smart.add_client(client_id, kind="asymmetric", jwks_uri=uri, scope="system/*.rs")


# -- through the application create_app builds ------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_keys_from_jwks_uri_reach_fhir(smart: Smart, jwks_host: JwksHost, alg: str) -> None:
    key = new_key("k1", alg)
    jwks_host.keys = [key]
    await register(smart, jwks_host.url)
    response = await ask(smart.http, signed(key))
    assert response.status_code == 200, response.text
    patients = await smart.http.get(
        "/fhir/Patient", headers=bearer(response.json()["access_token"])
    )
    assert patients.status_code == 200
    assert jwks_host.hits == 1
    again = await ask(smart.http, signed(key))  # from the cache
    assert again.status_code == 200 and jwks_host.hits == 1


async def test_unreachable_jwks_uri_is_invalid_client_and_audited(
    smart: Smart, jwks_host: JwksHost, client: httpx.AsyncClient
) -> None:
    key = new_key("k1")
    url = jwks_host.url
    jwks_host.close()  # nothing listens there any more
    await register(smart, url, "gone")
    response = await ask(smart.http, signed(key, "gone"))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    query = {"subtype": "token", "outcome": "4"}
    events = await audit_events(client, query, "invalid_client", "jwks_uri unreachable")
    assert events, "the refusal was not audited"
    assert events[0]["type"] == USER_AUTHENTICATION
    assert events[0]["subtype"][0] == GET_ACCESS_TOKEN


async def test_a_jwks_uri_serving_a_private_key_is_refused(
    smart: Smart, jwks_host: JwksHost
) -> None:
    key = new_key("k1")
    jwks_host.body = json.dumps({"keys": [key.as_dict(private=True)]}).encode()
    await register(smart, jwks_host.url)
    response = await ask(smart.http, signed(key))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# -- key rotation: an auth server whose fetcher runs on a clock the test moves ------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rotation_at_the_jwks_uri(app: FastAPI, smart: Smart, jwks_host: JwksHost) -> None:
    clock = Clock()
    fetcher = HttpJwksFetcher(ttl=300, refetch_interval=10, clock=clock)
    identity = app.state.identity
    keyring = app.state.keyring
    server = AuthServer.build(
        AuthConfig(issuer=identity.issuer, audience=identity.audience),
        smart.store,
        keyring,
        JwtTokenVerifier(keyring, identity.issuer, identity.audience),
        AccessPolicy(PatientCompartment.load()),
        app.state.audit,
        fetch_jwks=fetcher,
    )
    auth_app = FastAPI()
    auth_app.include_router(server.router())
    old, new = new_key("old"), new_key("new", "ES384")
    jwks_host.keys = [old]
    await register(smart, jwks_host.url)
    transport = httpx.ASGITransport(app=auth_app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        assert (await ask(http, signed(old))).status_code == 200
        jwks_host.keys = [new]  # the client rotates its key at its URL
        # within the refetch interval an unknown kid does not make the server refetch
        refused = await ask(http, signed(new))
        assert refused.status_code == 401 and jwks_host.hits == 1
        clock.now += 11
        rotated = await ask(http, signed(new))
        assert rotated.status_code == 200, rotated.text
        assert jwks_host.hits == 2
        # the retired key is gone from the set the server now holds
        assert (await ask(http, signed(old))).status_code == 401
        assert jwks_host.hits == 2  # "old" is unknown, but the interval has not passed


# -- the fetcher's guards -----------------------------------------------------------


async def test_ttl_expiry_refetches(jwks_host: JwksHost) -> None:
    clock = Clock()
    fetcher = HttpJwksFetcher(ttl=60, clock=clock)
    jwks_host.keys = [new_key("a")]
    first = await fetcher(jwks_host.url)
    await fetcher(jwks_host.url, kid="a")
    assert jwks_host.hits == 1 and first["keys"][0]["kid"] == "a"
    jwks_host.keys = [new_key("b")]
    clock.now += 61
    assert (await fetcher(jwks_host.url))["keys"][0]["kid"] == "b"
    assert jwks_host.hits == 2


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("https://client.example.org/jwks", True),
        ("http://127.0.0.1:8000/jwks", True),
        ("http://localhost/jwks", True),
        ("http://[::1]:9/jwks", True),
        ("http://client.example.org/jwks", False),
        ("file:///etc/passwd", False),
        ("ftp://client.example.org/jwks", False),
        ("https:///nohost", False),
    ],
)
def test_only_https_or_loopback_http(uri: str, allowed: bool) -> None:
    assert (check_jwks_uri(uri) is None) is allowed


async def test_plain_http_elsewhere_is_not_fetched() -> None:
    fetcher = HttpJwksFetcher()
    with pytest.raises(JwksUnavailable, match="https"):
        await fetcher("http://client.example.org/jwks")
    assert fetcher.fetches == 0


async def test_size_cap_status_and_shape(jwks_host: JwksHost) -> None:
    fetcher = HttpJwksFetcher(max_bytes=1024)
    jwks_host.body = b'{"keys": [' + b" " * 4096 + b"]}"
    with pytest.raises(JwksUnavailable, match="exceeds"):
        await fetcher(jwks_host.url)
    jwks_host.body = b'{"not": "a set"}'
    with pytest.raises(JwksUnavailable, match="JWK Set"):
        await fetcher(jwks_host.url)
    jwks_host.body, jwks_host.status = None, 404
    with pytest.raises(JwksUnavailable, match="404"):
        await fetcher(jwks_host.url)
