"""SMART Backend Services: client_credentials with a private_key_jwt assertion
signed by a freshly generated key pair (RS384 and ES384); replays, other
algorithms and wrong audiences refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart.clients import JWT_BEARER

from .conftest import BASE, Smart, bearer

TOKEN_URL = f"{BASE}/auth/token"


def generate(alg: str) -> RSAKey | ECKey:
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": alg})
    return ECKey.generate_key("P-384", parameters={"kid": "k1", "alg": alg})


def assertion(key: RSAKey | ECKey, alg: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "bulk",
        "sub": "bulk",
        "aud": TOKEN_URL,
        "exp": now + 240,
        "iat": now,
        "jti": str(uuid.uuid4()),
        **overrides,
    }
    return jwt.encode({"alg": alg, "kid": "k1", "typ": "JWT"}, claims, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def register(smart: Smart, key: RSAKey | ECKey) -> None:
    jwks = json.dumps({"keys": [key.as_dict(private=False)]})
    await smart.add_client("bulk", kind="asymmetric", jwks=jwks, scope="system/*.rs")


async def ask(smart: Smart, signed: str, scope: str = "system/Patient.rs") -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": signed,
    }
    return await smart.http.post("/auth/token", data=data)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_backend_token_reads_fhir(smart: Smart, alg: str) -> None:
    key = generate(alg)
    await register(smart, key)
    response = await ask(smart, assertion(key, alg))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "system/Patient.rs" and "refresh_token" not in body
    assert response.headers["cache-control"] == "no-store"
    patients = await smart.http.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert patients.status_code == 200


async def test_replayed_assertion_is_refused(smart: Smart) -> None:
    key = generate("RS384")
    await register(smart, key)
    signed = assertion(key, "RS384")
    assert (await ask(smart, signed)).status_code == 200
    replay = await ask(smart, signed)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "overrides",
    [{"aud": f"{BASE}/other"}, {"iss": "someone"}, {"exp": int(time.time()) - 600}],
    ids=["audience", "issuer", "expired"],
)
async def test_bad_assertion_claims(smart: Smart, overrides: dict[str, Any]) -> None:
    key = generate("ES384")
    await register(smart, key)
    response = await ask(smart, assertion(key, "ES384", **overrides))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_assertion_living_too_long(smart: Smart) -> None:
    key = generate("ES384")
    await register(smart, key)
    response = await ask(smart, assertion(key, "ES384", exp=int(time.time()) + 3600))
    assert response.json()["error"] == "invalid_client"


async def test_alg_none_and_hmac_assertions_are_refused(smart: Smart) -> None:
    key = generate("RS384")
    await register(smart, key)
    claims = {"iss": "bulk", "sub": "bulk", "aud": TOKEN_URL, "exp": int(time.time()) + 60}
    payload = b64(json.dumps({**claims, "jti": "a"}).encode())
    none = f"{b64(json.dumps({'alg': 'none'}).encode())}.{payload}."
    assert (await ask(smart, none)).json()["error"] == "invalid_client"
    # HMAC keyed with the public key: the classic algorithm-confusion attack
    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = b64(json.dumps({**claims, "jti": "b"}).encode())
    secret = json.dumps(key.as_dict(private=False)).encode()
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert (await ask(smart, f"{header}.{payload}.{b64(mac)}")).json()["error"] == "invalid_client"


async def test_only_system_scopes_within_the_registration(smart: Smart) -> None:
    key = generate("RS384")
    await register(smart, key)
    user_scope = await ask(smart, assertion(key, "RS384"), scope="user/Patient.rs")
    assert user_scope.status_code == 400 and user_scope.json()["error"] == "invalid_scope"
    beyond = await ask(smart, assertion(key, "RS384"), scope="system/Patient.cruds")
    assert beyond.json()["error"] == "invalid_scope"
    unknown_type = await ask(
        smart, assertion(key, "RS384"), scope="system/Patient.rs"
    )  # still fine after two refusals: their jtis were not consumed by a success
    assert unknown_type.status_code == 200


async def test_wrong_assertion_type_and_public_client(smart: Smart) -> None:
    await smart.add_client("spa")
    data = {"grant_type": "client_credentials", "scope": "system/Patient.rs", "client_id": "spa"}
    public = await smart.http.post("/auth/token", data=data)
    assert public.status_code == 400 and public.json()["error"] == "unauthorized_client"
    odd = await smart.http.post(
        "/auth/token",
        data={**data, "client_assertion_type": "urn:other", "client_assertion": "x.y.z"},
    )
    assert odd.status_code == 401 and odd.json()["error"] == "invalid_client"
