"""Every response carries ``Cache-Control: no-store`` and ``X-Content-Type-Options:
nosniff`` unless its route set its own caching (fhir_server.http.security_headers):
FHIR reads (the fast lane) and searches, DICOMweb, the admin API, refusals."""

from __future__ import annotations

import httpx
import pytest

from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

STUDY, SERIES, SOP = "1.2.3", "1.2.3.1", "1.2.3.1.1"
INSTANCE = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}"


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> httpx.AsyncClient:
    body = multipart(make_instance(STUDY, SERIES, SOP))
    response = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200
    created = await client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Doe"}]}
    )
    assert created.status_code == 201
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient/{patient}",  # the read lane
        "/fhir/Patient?family=Doe",
        "/fhir/Patient/unknown",  # an error
        "/dicomweb/studies",
        INSTANCE,
        f"{INSTANCE}/rendered",
        f"{INSTANCE}/frames/1",
        f"/dicomweb/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}",
        "/auth/admin/users",  # refused: the token is not an admin's
    ],
)
async def test_patient_data_is_never_cached_nor_sniffed(
    stored: httpx.AsyncClient, path: str
) -> None:
    patients = (await stored.get("/fhir/Patient")).json()["entry"]
    response = await stored.get(path.format(patient=patients[0]["resource"]["id"]))
    assert response.headers["cache-control"] == "no-store", path
    assert response.headers["x-content-type-options"] == "nosniff", path


async def test_a_refusal_without_a_token_too(anon: httpx.AsyncClient) -> None:
    for path in ("/fhir/Patient", "/dicomweb/studies"):
        response = await anon.get(path)
        assert response.status_code == 401
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_route_that_sets_its_own_caching_keeps_it(
    stored: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    metadata = await stored.get(f"{INSTANCE}/metadata")
    assert metadata.headers["cache-control"] == "private, no-cache"  # revalidated by ETag
    keys = await anon.get("/auth/jwks")
    assert keys.headers["cache-control"] == "max-age=300"
    assert keys.headers["x-content-type-options"] == "nosniff"
