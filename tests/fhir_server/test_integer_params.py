"""Integers in FHIR URLs and headers are ASCII digits (``url_integers``): ``²`` passed
``str.isdigit()`` and then failed ``int()`` (a 500); ``１`` and huge values were taken."""

from __future__ import annotations

import httpx

PATIENT = {"resourceType": "Patient", "name": [{"family": "Digits"}]}


async def test_malformed_integers_are_the_client_s_error(client: httpx.AsyncClient) -> None:
    created = await client.post("/fhir/Patient", json=PATIENT)
    assert created.status_code == 201
    pid = created.json()["id"]
    for bad in ("²", "１", "1_0", "-1", "+1", " 1"):
        for url in (
            "/fhir/Patient",
            "/fhir/Patient/_history",
            f"/fhir/Patient/{pid}/$everything",
        ):
            response = await client.get(url, params={"_count": bad})
            assert response.status_code == 400, (url, bad, response.status_code)
        response = await client.get(f"/fhir/Patient/{pid}/_history/{bad}")
        assert response.status_code == 404, (bad, response.status_code)
        if bad.isascii():  # (a header field is Latin-1 at most)
            response = await client.put(
                f"/fhir/Patient/{pid}",
                json=PATIENT | {"id": pid},
                headers={"If-Match": f'W/"{bad}"'},
            )
            assert response.status_code == 412, (bad, response.status_code)
    huge = "9" * 40  # taken, and capped: no overflow anywhere
    assert (await client.get("/fhir/Patient", params={"_count": huge})).status_code == 200
    assert (await client.get(f"/fhir/Patient/{pid}/_history/{huge}")).status_code == 404
    assert (await client.get(f"/fhir/Patient/{pid}/_history/1")).status_code == 200
