from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from fhir_server.access import TokenVerifier, bearer_token
from fhir_server.errors import Unauthorized
from smart.keys import KeyRing
from smart.tokens import JwtTokenVerifier, mint_access_token

ISSUER = "https://radhub.example.org/auth"
AUDIENCE = "https://radhub.example.org/fhir"
NOW = 1_700_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring(tmp_path: Path, clock: Clock) -> KeyRing:
    return KeyRing.open(tmp_path, retire_after=7200, clock=clock)


@pytest.fixture
def verifier(keyring: KeyRing, clock: Clock) -> JwtTokenVerifier:
    return JwtTokenVerifier(keyring, ISSUER, AUDIENCE, clock=clock)


def mint(keyring: KeyRing, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "scope": "patient/*.rs openid",
        "subject": "user-1",
        "now": NOW,
    }
    return mint_access_token(keyring, **{**args, **overrides})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return result


async def refused(verifier: JwtTokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    challenge = info.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="radhub", error="invalid_token"')
    return challenge


def test_the_verifier_fits_the_seam(verifier: JwtTokenVerifier) -> None:
    seam: TokenVerifier = verifier
    assert seam is verifier


async def test_round_trip(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    token = mint(
        keyring,
        client_id="portal",
        patient="p1",
        encounter="e1",
        fhir_user="Patient/p1",
        roles=("patient",),
    )
    ctx = await verifier.verify(token)
    assert ctx.subject == "user-1"
    assert ctx.client_id == "portal"
    assert (ctx.patient, ctx.encounter, ctx.fhir_user) == ("p1", "e1", "Patient/p1")
    assert ctx.roles == {"patient"}
    assert ctx.token_id == claims_of(token)["jti"]
    assert ctx.scopes.allows("Observation", "r")
    assert ctx.scopes.other == {"openid"}


def test_claims_and_header(keyring: KeyRing) -> None:
    token = mint(keyring, ttl=300, client_id="c")
    claims = claims_of(token)
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["iat"] == claims["nbf"] == NOW
    assert claims["exp"] == NOW + 300
    assert claims["client_id"] == "c"
    assert "patient" not in claims
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "kid": keyring.active_key.kid, "typ": "at+jwt"}
    assert mint(keyring) != mint(keyring)  # fresh jti each time


async def test_expired(keyring: KeyRing, verifier: JwtTokenVerifier, clock: Clock) -> None:
    token = mint(keyring, ttl=60)
    clock.now = NOW + 60 + 29  # within the leeway
    await verifier.verify(token)
    clock.now = NOW + 60 + 30
    assert "expired" in await refused(verifier, token)


async def test_not_yet_valid(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    await refused(verifier, mint(keyring, now=NOW + 3600))


@pytest.mark.parametrize(
    "overrides",
    [
        {"audience": "https://other.example.org/fhir"},
        {"issuer": "https://evil.example.org"},
    ],
)
async def test_wrong_audience_or_issuer(
    keyring: KeyRing, verifier: JwtTokenVerifier, overrides: dict[str, str]
) -> None:
    await refused(verifier, mint(keyring, **overrides))


async def test_tampered_payload(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    header, _, signature = mint(keyring).split(".")
    claims = claims_of(mint(keyring))
    claims["scope"] = "system/*.cruds"
    assert "bad signature" in await refused(
        verifier, ".".join([header, b64json(claims), signature])
    )


async def test_alg_none(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    claims = claims_of(mint(keyring))
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "kid": keyring.active_key.kid, "typ": "at+jwt"}
        await refused(verifier, f"{b64json(header)}.{b64json(claims)}.")


async def test_hs256_signed_with_the_public_key(
    keyring: KeyRing, verifier: JwtTokenVerifier
) -> None:
    public = keyring.active_key.jwk.public_key
    secrets = [
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(keyring.active_key.public_jwk()).encode(),
    ]
    claims = claims_of(mint(keyring))
    for secret in secrets:
        header = {"alg": "HS256", "kid": keyring.active_key.kid, "typ": "at+jwt"}
        signing_input = f"{b64json(header)}.{b64json(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        challenge = await refused(verifier, f"{signing_input}.{b64(mac)}")
        assert "unexpected signing algorithm" in challenge


async def test_unknown_kid(keyring: KeyRing, verifier: JwtTokenVerifier, tmp_path: Path) -> None:
    other = KeyRing.open(tmp_path / "other")
    assert "unknown signing key" in await refused(verifier, mint(other))
    stranger = RSAKey.generate_key(2048)
    claims = claims_of(mint(keyring))
    for header in (
        {"alg": "RS256", "kid": "nope", "typ": "at+jwt"},
        {"alg": "RS256", "typ": "at+jwt"},
    ):
        await refused(verifier, jwt.encode(header, claims, stranger))


async def test_same_kid_forged_with_another_key(
    keyring: KeyRing, verifier: JwtTokenVerifier
) -> None:
    stranger = RSAKey.generate_key(2048)
    header = {"alg": "RS256", "kid": keyring.active_key.kid, "typ": "at+jwt"}
    assert "bad signature" in await refused(
        verifier, jwt.encode(header, claims_of(mint(keyring)), stranger)
    )


async def test_algorithm_other_than_the_keys(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    # The right key, used with an algorithm it was not issued for.
    private = dict(keyring.active_key.jwk.as_dict(private=True))
    del private["alg"]
    header = {"alg": "RS512", "kid": keyring.active_key.kid, "typ": "at+jwt"}
    token = jwt.encode(header, claims_of(mint(keyring)), RSAKey.import_key(private), ["RS512"])
    assert "unexpected signing algorithm" in await refused(verifier, token)


async def test_not_an_access_token(keyring: KeyRing, verifier: JwtTokenVerifier) -> None:
    # An id_token signed by the same key must not work as an access token.
    key = keyring.active_key
    claims = claims_of(mint(keyring))
    for typ in ("JWT", None):
        header = {"alg": key.alg, "kid": key.kid, **({"typ": typ} if typ else {})}
        assert "not an access token" in await refused(verifier, jwt.encode(header, claims, key.jwk))


@pytest.mark.parametrize("missing", ["sub", "exp", "jti", "aud", "iss"])
async def test_missing_claims(keyring: KeyRing, verifier: JwtTokenVerifier, missing: str) -> None:
    key = keyring.active_key
    claims = claims_of(mint(keyring))
    del claims[missing]
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    await refused(verifier, jwt.encode(header, claims, key.jwk))


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", "a.b", "é.é.é", "x" * 20000, "eyJhbGciOiJSUzI1NiJ9.e30.e30"]
)
async def test_malformed(verifier: JwtTokenVerifier, token: str) -> None:
    await refused(verifier, token)


async def test_rotation_keeps_old_tokens_valid_until_retired(
    keyring: KeyRing, verifier: JwtTokenVerifier, clock: Clock
) -> None:
    old_token = mint(keyring, ttl=3 * 3600)
    keyring.rotate()
    new_token = mint(keyring)
    await verifier.verify(old_token)
    await verifier.verify(new_token)
    clock.now = NOW + 7200
    await refused(verifier, old_token)


async def test_revocation_hook(keyring: KeyRing, clock: Clock) -> None:
    revoked: set[str] = set()

    async def is_revoked(jti: str) -> bool:
        return jti in revoked

    verifier = JwtTokenVerifier(keyring, ISSUER, AUDIENCE, clock=clock, is_revoked=is_revoked)
    token = mint(keyring)
    await verifier.verify(token)
    revoked.add(claims_of(token)["jti"])
    assert "revoked" in await refused(verifier, token)


@pytest.mark.parametrize("alg", ["RS384", "ES256", "ES384"])
async def test_other_algorithms_round_trip(tmp_path: Path, clock: Clock, alg: str) -> None:
    ring = KeyRing.open(tmp_path, alg=alg, clock=clock)
    verifier = JwtTokenVerifier(ring, ISSUER, AUDIENCE, clock=clock)
    assert (await verifier.verify(mint(ring))).subject == "user-1"


# --- the bearer header (fhir_server.access.tokens) ---------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer  a-b_c~+/==", "a-b_c~+/=="),
        (" BEARER x ", "x"),
    ],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Token abc", "Bearerabc"])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(header)
    assert info.value.status == 401
    assert info.value.headers == {"WWW-Authenticate": 'Bearer realm="radhub"'}


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer ", "Bearer a b", 'Bearer a"b', "Bearer ===", "Bearer é"]
)
def test_bearer_token_malformed(header: str) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(header)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
