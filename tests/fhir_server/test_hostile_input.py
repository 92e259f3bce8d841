"""Odd but possible requests from a client with a valid token, each answered in
FHIR's terms (an OperationOutcome with a 4xx) instead of a 500, and one that
could hold the server: a JSON Patch whose copies double a value each time.
Found by an audit that sent such requests to the running app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_server.interactions.crud import MAX_PATCH_COPY_BYTES

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
async def patient(client: httpx.AsyncClient) -> httpx.AsyncClient:
    response = await client.put(
        "/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR
    )
    assert response.status_code == 201
    return client


def issue(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    first: dict[str, Any] = body["issue"][0]
    return first


async def test_a_patch_copying_a_value_into_itself_is_refused(patient: httpx.AsyncClient) -> None:
    """Each copy of /x into /x doubles it: 20 such operations in a 1 kB body held the
    event loop for 2 s, 30 would need gigabytes."""
    doubling = [{"op": "add", "path": "/x", "value": [1]}]
    doubling += [{"op": "copy", "from": "/x", "path": "/x/-"}] * 30
    response = await patient.patch("/fhir/Patient/p1", json=doubling, headers=PATCH)
    assert response.status_code == 422
    assert f"more than {MAX_PATCH_COPY_BYTES} bytes" in issue(response)["diagnostics"]
    unchanged = await patient.get("/fhir/Patient/p1")
    assert unchanged.json()["meta"]["versionId"] == "1"


async def test_a_patch_may_still_copy(patient: httpx.AsyncClient) -> None:
    ops = [
        {"op": "add", "path": "/name", "value": [{"family": "Roe"}]},
        {"op": "copy", "from": "/name/0", "path": "/name/-"},
    ]
    response = await patient.patch("/fhir/Patient/p1", json=ops, headers=PATCH)
    assert response.status_code == 200
    assert response.json()["name"] == [{"family": "Roe"}, {"family": "Roe"}]


@pytest.mark.parametrize(
    ("since", "status"),
    [
        ("Sat, 01 Jan 2000 00:00:00 -0000", 200),  # "-0000": UTC, no zone (RFC 5322 §3.3)
        ("Fri, 01 Jan 2100 00:00:00 -0000", 304),
        ("Fri, 01 Jan 2100 00:00:00 GMT", 304),
    ],
)
async def test_if_modified_since_without_a_zone_is_utc(
    patient: httpx.AsyncClient, since: str, status: int
) -> None:
    response = await patient.get("/fhir/Patient/p1", headers={"If-Modified-Since": since})
    assert response.status_code == status


@pytest.mark.parametrize("id_value", [5, ["p1"], {"id": "p1"}])
async def test_a_conditional_update_with_an_id_that_is_not_a_string(
    client: httpx.AsyncClient, id_value: object
) -> None:
    body = {"resourceType": "Patient", "id": id_value}
    response = await client.put("/fhir/Patient?identifier=none", json=body, headers=FHIR)
    assert response.status_code == 400
    assert "invalid resource id" in issue(response)["diagnostics"]


def nested_extensions(depth: int) -> str:
    inner = '[{"url":"http://example.org/x","extension":' * depth + "[]" + "}]" * depth
    return '{"resourceType":"Patient","extension":' + inner + "}"


async def test_a_resource_nested_too_deeply_for_the_validator(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/Patient", content=nested_extensions(150), headers=FHIR)
    assert response.status_code == 400
    assert "nested too deeply" in issue(response)["diagnostics"]


async def test_a_transaction_entry_nested_too_deeply(client: httpx.AsyncClient) -> None:
    """Reference rewriting walks an entry's resource before validation does."""
    deep = "[" * 1000 + "]" * 1000
    resource = '{"resourceType":"Patient","x":' + deep + "}"
    entry = '{"resource":' + resource + ',"request":{"method":"POST","url":"Patient"}}'
    body = '{"resourceType":"Bundle","type":"transaction","entry":[' + entry + "]}"
    response = await client.post("/fhir", content=body, headers=FHIR)
    assert response.status_code == 400
    assert "nested too deeply" in issue(response)["diagnostics"]


PATIENT = {"resourceType": "Patient"}


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {
                "resource": PATIENT,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": 5},
            },
            "ifNoneExist must be a string",
        ),
        (
            {
                "resource": {"resourceType": "Patient", "id": "p1"},
                "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": 1},
            },
            "ifMatch must be a string",
        ),
        (
            {"fullUrl": [1], "resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
            "fullUrl must be a string",
        ),
        ({"request": {"method": ["GET"], "url": "Patient"}}, "needs a method and a url"),
        (
            {
                "resource": {"resourceType": "Binary", "data": 5},
                "request": {"method": "PATCH", "url": "Patient/p1"},
            },
            "does not hold JSON",
        ),
        ({"request": {"method": "GET", "url": "http://[::1/Patient"}}, "url is malformed"),
    ],
)
async def test_bundle_entry_fields_of_the_wrong_type(
    patient: httpx.AsyncClient, entry: dict[str, Any], says: str
) -> None:
    """A transaction is refused whole; in a batch the entry alone fails (400)."""
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    refused = await patient.post("/fhir", json=transaction, headers=FHIR)
    assert refused.status_code == 400
    assert says in issue(refused)["diagnostics"]
    good = {"request": {"method": "GET", "url": "Patient/p1"}}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [entry, good]}
    answered = await patient.post("/fhir", json=batch, headers=FHIR)
    assert answered.status_code == 200
    statuses = [e["response"]["status"] for e in answered.json()["entry"]]
    assert statuses[0].startswith("400") and statuses[1].startswith("200")
