"""Conditional create, update and delete. See https://hl7.org/fhir/R4/http.html#ccreate,
#cond-update and #cdelete"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"


def _patient(mrn: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn}],
        "name": [{"family": family}],
        **extra,
    }


async def _count(client: httpx.AsyncClient, query: str) -> int:
    r = await client.get(f"/fhir/Patient?{query}&_total=accurate")
    assert r.status_code == 200, r.text
    return len(r.json()["entry"])


async def test_conditional_create(client: httpx.AsyncClient) -> None:
    cond = {"If-None-Exist": f"identifier={SYSTEM}|12345"}
    first = await client.post("/fhir/Patient", json=_patient("12345"), headers={**FHIR, **cond})
    assert first.status_code == 201, first.text
    rid = first.json()["id"]

    again = await client.post(
        "/fhir/Patient", json=_patient("12345", "Other"), headers={**FHIR, **cond}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == rid
    assert again.json()["name"][0]["family"] == "Doe"  # the existing one, unchanged
    assert await _count(client, f"identifier={SYSTEM}|12345") == 1

    # a second match makes the condition ambiguous
    await client.post("/fhir/Patient", json=_patient("12345"), headers=FHIR)
    many = await client.post("/fhir/Patient", json=_patient("12345"), headers={**FHIR, **cond})
    assert many.status_code == 412
    assert many.json()["resourceType"] == "OperationOutcome"
    assert await _count(client, f"identifier={SYSTEM}|12345") == 2


async def test_conditional_create_by_id_and_leading_question_mark(
    client: httpx.AsyncClient,
) -> None:
    r = await client.put(
        "/fhir/Patient/known", json={"resourceType": "Patient", "id": "known"}, headers=FHIR
    )
    assert r.status_code == 201
    same = await client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={**FHIR, "If-None-Exist": "?_id=known"},
    )
    assert same.status_code == 200
    assert same.json()["id"] == "known"


async def test_conditional_create_bad_criteria_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Patient",
        json=_patient("1"),
        headers={**FHIR, "If-None-Exist": "no-such-param=1"},
    )
    assert r.status_code == 400
    assert await _count(client, "identifier=1") == 0


async def test_conditional_update(client: httpx.AsyncClient) -> None:
    url = f"/fhir/Patient?identifier={SYSTEM}|777"
    # no match, no id: created
    created = await client.put(url, json=_patient("777"), headers=FHIR)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    # one match: that resource is updated
    updated = await client.put(url, json=_patient("777", "Smith"), headers=FHIR)
    assert updated.status_code == 200, updated.text
    assert updated.json()["id"] == rid
    assert updated.json()["meta"]["versionId"] == "2"
    assert (await client.get(f"/fhir/Patient/{rid}")).json()["name"][0]["family"] == "Smith"
    # a body id that is not the match's: 400
    wrong = await client.put(url, json={**_patient("777"), "id": "other"}, headers=FHIR)
    assert wrong.status_code == 400
    # several matches: 412
    await client.post("/fhir/Patient", json=_patient("777"), headers=FHIR)
    many = await client.put(url, json=_patient("777", "Jones"), headers=FHIR)
    assert many.status_code == 412
    assert (await client.get(f"/fhir/Patient/{rid}")).json()["name"][0]["family"] == "Smith"


async def test_conditional_update_without_criteria_is_400(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient", json=_patient("1"), headers=FHIR)
    assert r.status_code == 400


async def test_conditional_delete(client: httpx.AsyncClient) -> None:
    a = (await client.post("/fhir/Patient", json=_patient("d1"), headers=FHIR)).json()["id"]
    b = (await client.post("/fhir/Patient", json=_patient("d2"), headers=FHIR)).json()["id"]
    # no match: nothing to do
    none = await client.delete(f"/fhir/Patient?identifier={SYSTEM}|nobody")
    assert none.status_code in (200, 204)
    # one match by identifier
    r = await client.delete(f"/fhir/Patient?identifier={SYSTEM}|d1")
    assert r.status_code in (200, 204)
    assert (await client.get(f"/fhir/Patient/{a}")).status_code == 410
    assert (await client.get(f"/fhir/Patient/{b}")).status_code == 200
    # one match by _id
    r = await client.delete(f"/fhir/Patient?_id={b}")
    assert r.status_code in (200, 204)
    assert (await client.get(f"/fhir/Patient/{b}")).status_code == 410


async def test_conditional_delete_multiple_is_412(client: httpx.AsyncClient) -> None:
    ids = [
        (await client.post("/fhir/Patient", json=_patient("twin"), headers=FHIR)).json()["id"]
        for _ in range(2)
    ]
    r = await client.delete(f"/fhir/Patient?identifier={SYSTEM}|twin")
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"
    for rid in ids:
        assert (await client.get(f"/fhir/Patient/{rid}")).status_code == 200


async def test_conditional_delete_unknown_param_is_400(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/fhir/Patient", json=_patient("x"), headers=FHIR)).json()["id"]
    r = await client.delete("/fhir/Patient?bogus=1")
    assert r.status_code == 400
    assert (await client.get(f"/fhir/Patient/{rid}")).status_code == 200


async def test_concurrent_conditional_creates_make_one(client: httpx.AsyncClient) -> None:
    cond = {"If-None-Exist": f"identifier={SYSTEM}|race"}
    results = await asyncio.gather(
        *(
            client.post("/fhir/Patient", json=_patient("race"), headers={**FHIR, **cond})
            for _ in range(10)
        )
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 9 + [201], statuses
    assert len({r.json()["id"] for r in results}) == 1
    assert await _count(client, f"identifier={SYSTEM}|race") == 1


async def test_concurrent_version_aware_updates_one_wins(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=_patient("v"), headers=FHIR)).json()
    url = f"/fhir/Patient/{created['id']}"
    results = await asyncio.gather(
        *(
            client.put(
                url,
                json={**created, "name": [{"family": f"n{i}"}]},
                headers={**FHIR, "If-Match": 'W/"1"'},
            )
            for i in range(8)
        )
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [412] * 7, statuses
    assert (await client.get(url)).json()["meta"]["versionId"] == "2"


async def test_concurrent_plain_updates_all_land(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=_patient("w"), headers=FHIR)).json()
    url = f"/fhir/Patient/{created['id']}"
    results = await asyncio.gather(
        *(client.put(url, json={**created, "gender": "other"}, headers=FHIR) for _ in range(8))
    )
    assert sorted(r.status_code for r in results) == [200] * 8
    assert sorted(int(r.json()["meta"]["versionId"]) for r in results) == list(range(2, 10))
