from __future__ import annotations

import httpx

FHIR = "application/fhir+json"


async def test_create_read(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Doe"}]},
        headers={"Content-Type": FHIR},
    )
    assert r.status_code == 201, r.text
    loc = r.headers["location"]
    rid = r.json()["id"]
    r2 = await client.get(f"/fhir/Patient/{rid}")
    assert r2.status_code == 200, r2.text
    assert r2.json()["name"][0]["family"] == "Doe"
    assert loc.endswith(f"/Patient/{rid}/_history/1")
