"""A credential a client put in a query string is not kept in the audit trail: radhub
takes none from there, but the AuditEvent records the query a request sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from fhir_server.audit import REDACTED, without_secrets

Flush = Callable[[], Awaitable[None]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("name=smith", "name=smith"),
        ("access_token=eyJ.abc.def", f"access_token={REDACTED}"),
        ("name=smith&access_token=t1&_count=5", f"name=smith&access_token={REDACTED}&_count=5"),
        ("GET /dicomweb/studies?ACCESS_TOKEN=t1", f"GET /dicomweb/studies?ACCESS_TOKEN={REDACTED}"),
        ("id_token=a&refresh_token=b", f"id_token={REDACTED}&refresh_token={REDACTED}"),
        ("client_secret=s;password=p", f"client_secret={REDACTED};password={REDACTED}"),
        ("client_assertion=jwt", f"client_assertion={REDACTED}"),
        ("access_token=", f"access_token={REDACTED}"),
        ("my_access_token=kept", "my_access_token=kept"),  # another parameter
        ("code=http://loinc.org|1234-5", "code=http://loinc.org|1234-5"),  # a search parameter
        ("name=access_token=x", "name=access_token=x"),  # inside another's value
    ],
)
def test_credential_parameters_lose_their_values(query: str, expected: str) -> None:
    assert without_secrets(query) == expected


async def test_a_token_sent_in_the_query_is_not_in_the_trail(
    client: httpx.AsyncClient, flush_audit: Flush
) -> None:
    secret = "not-a-token-but-a-secret-all-the-same"
    response = await client.get(f"/fhir/Patient?name=zz-audit&access_token={secret}")
    assert response.status_code == 200
    await flush_audit()
    found = (await client.get("/fhir/AuditEvent?_count=500")).json()["entry"]
    trail = orjson.dumps(found).decode()
    assert "zz-audit" in trail  # the search was audited, with its query
    assert secret not in trail and f"access_token={REDACTED}" in trail
