"""Client authentication that cannot be decoded is invalid_client (401), never an
exception out of the app: Basic credentials that are not ASCII, and a client
assertion whose header nests deeper than the JSON parser recurses."""

from __future__ import annotations

import base64

import httpx
import pytest


@pytest.mark.parametrize("endpoint", ["/auth/token", "/auth/introspect", "/auth/revoke"])
async def test_basic_credentials_that_are_not_ascii(anon: httpx.AsyncClient, endpoint: str) -> None:
    response = await anon.post(
        endpoint,
        data={"grant_type": "client_credentials", "token": "x"},
        headers={"Authorization": b"Basic \xe9\xe9\xe9"},  # type: ignore[dict-item]
    )
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "malformed Basic credentials",
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_client_assertion_nested_too_deeply(anon: httpx.AsyncClient) -> None:
    assertion = f"{b64url(b'[' * 3000)}.{b64url(b'{}')}.c2ln"
    response = await anon.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
