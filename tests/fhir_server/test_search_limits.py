"""Searches larger than SQLite takes in one statement: hundreds of OR values are
served (a client fetching many patients' results at once), and what is beyond
any statement's limits is the client's 400, not a 503 that invites a retry."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.http.routes import MAX_FORM_FIELDS

FHIR = {"Content-Type": "application/fhir+json"}
FORM = "application/x-www-form-urlencoded"
STORED = range(0, 1300, 100)  # 13 patients among the 1,300 values asked for


@pytest.fixture
async def patients(client: httpx.AsyncClient) -> httpx.AsyncClient:
    for i in STORED:
        patient = {
            "resourceType": "Patient",
            "id": f"p{i}",
            "identifier": [{"system": "urn:s", "value": f"v{i}"}],
            "birthDate": f"2000-01-{i // 100 + 1:02d}",
        }
        assert (await client.put(f"/fhir/Patient/p{i}", json=patient, headers=FHIR)).is_success
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/p{i}"},
        }
        assert (await client.post("/fhir/Observation", json=observation, headers=FHIR)).is_success
    return client


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


async def test_many_or_values_are_served(patients: httpx.AsyncClient) -> None:
    """SQLite takes 500 terms in one compound SELECT; 501 values were a 503."""
    values = ",".join(f"urn:s|v{i}" for i in range(1300))
    found = await patients.post(
        "/fhir/Patient/_search", data={"identifier": values, "_count": "50"}
    )
    assert ids(found) == sorted(f"p{i}" for i in STORED)
    references = ",".join(f"Patient/p{i}" for i in range(1300))
    observations = await patients.post(
        "/fhir/Observation/_search", data={"subject": references, "_count": "50"}
    )
    assert len(ids(observations)) == len(STORED)


async def test_many_date_values_each_a_union_of_its_own(patients: httpx.AsyncClient) -> None:
    """A date's lookup is itself a compound SELECT (one term per kind of span)."""
    days = ",".join(f"2000-01-{d % 28 + 1:02d}" for d in range(600))
    found = await patients.get("/fhir/Patient", params={"birthdate": days, "_count": "50"})
    assert ids(found) == sorted(f"p{i}" for i in STORED)


@pytest.mark.parametrize(
    "query",
    [
        [("name", f"a{i}") for i in range(1000)],  # an expression tree too deep
        [("link." * 20 + "name", "x")],  # a chain too long for the parser
    ],
    ids=["and-depth", "chain"],
)
async def test_a_search_beyond_the_statement_limits_is_400(
    client: httpx.AsyncClient, query: list[tuple[str, str]]
) -> None:
    response = await client.post(
        "/fhir/Patient/_search", content=urlencode(query), headers={"Content-Type": FORM}
    )
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["issue"][0]["code"] == "invalid"
    assert "too complex" in outcome["issue"][0]["diagnostics"]


async def test_a_repeated_sort_key_is_one_key(patients: httpx.AsyncClient) -> None:
    """2,000 times ``_id`` made a statement with too many columns."""
    response = await patients.get("/fhir/Patient", params={"_sort": ",".join(["-_id"] * 2000)})
    assert ids(response) == sorted(f"p{i}" for i in STORED)
    assert [e["resource"]["id"] for e in response.json()["entry"]][0] == "p900"


@pytest.mark.parametrize("value", ["1e999999999", "1e-999999999", "1e401"])
async def test_a_number_beyond_any_float_is_400(client: httpx.AsyncClient, value: str) -> None:
    for search in (f"Observation?value-quantity={value}", f"Encounter?length={value}"):
        response = await client.get(f"/fhir/{search}")
        assert response.status_code == 400
        assert "out of range" in response.json()["issue"][0]["diagnostics"]


async def test_a_search_form_is_read_within_the_body_limit(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Starlette's form reader held up to 1000 fields of 1 MiB each: a GiB per request."""
    limit = app.state.services.limits.max_body_bytes
    huge = urlencode({"name": "x" * limit})
    response = await client.post(
        "/fhir/Patient/_search", content=huge, headers={"Content-Type": FORM}
    )
    assert response.status_code == 413
    many = urlencode([("name", "x")] * (MAX_FORM_FIELDS + 1))
    response = await client.post(
        "/fhir/Patient/_search", content=many, headers={"Content-Type": FORM}
    )
    assert response.status_code == 400
    assert "cannot be read" in response.json()["issue"][0]["diagnostics"]
    joann = {"resourceType": "Patient", "name": [{"family": "Jo Ann"}]}
    assert (await client.post("/fhir/Patient", json=joann, headers=FHIR)).status_code == 201
    for form, found in [("name=Jo+Ann", 1), ("name=Jo%20Ann", 1), ("name=Jo%2BAnn", 0)]:
        response = await client.post(
            "/fhir/Patient/_search", content=form, headers={"Content-Type": FORM}
        )
        assert response.status_code == 200
        assert len(response.json().get("entry", [])) == found, form
