"""The OAuth endpoints read their forms within small bounds (``FORM_LIMITS``) before
any check: Starlette's defaults, 1000 fields of 1 MiB, let one unauthenticated
request make the server hold a GiB (990 fields of 1 MB: 1.9 GB peak)."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from smart.server import FORM_LIMITS

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ENDPOINTS = ["/auth/token", "/auth/introspect", "/auth/revoke", "/auth/authorize"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_too_many_fields_is_a_400(anon: httpx.AsyncClient, endpoint: str) -> None:
    fields = [(f"f{i}", "x") for i in range(FORM_LIMITS["max_fields"] + 1)]
    response = await anon.post(endpoint, content=urlencode(fields), headers=FORM)
    assert response.status_code == 400
    assert "Too many fields" in response.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_field_too_long_is_a_400(anon: httpx.AsyncClient, endpoint: str) -> None:
    body = urlencode({"grant_type": "x" * (FORM_LIMITS["max_part_size"] + 1)})
    response = await anon.post(endpoint, content=body, headers=FORM)
    assert response.status_code == 400
    assert "exceeded maximum size" in response.text


async def test_a_form_within_the_bounds_is_read(anon: httpx.AsyncClient) -> None:
    fields = [("grant_type", "client_credentials")]
    fields += [(f"f{i}", "x") for i in range(FORM_LIMITS["max_fields"] - 1)]
    response = await anon.post("/auth/token", content=urlencode(fields), headers=FORM)
    assert response.status_code == 401  # read, then refused: no client authenticated
    assert response.json()["error"] == "invalid_client"
