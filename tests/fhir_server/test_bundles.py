"""Batch and transaction Bundles. See https://hl7.org/fhir/R4/http.html#transaction"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://radhub.test/fhir"
MRN = "urn:oid:1.2.36.146.595.217.0.1"


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _post(full_url: str, resource: dict[str, Any], **request: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _patient(mrn: str, family: str = "Doe") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": family}],
    }


def _order(subject: str, tag: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "urn:radhub:test", "value": tag}],
        "subject": {"reference": subject},
    }


def _hundred(tag: str) -> tuple[list[dict[str, Any]], list[str]]:
    """20 patients and 80 orders referring to them by urn:uuid."""
    patient_urls = [_urn() for _ in range(20)]
    entries = [_post(u, _patient(f"{tag}-{i}")) for i, u in enumerate(patient_urls)]
    for i in range(80):
        entries.append(_post(_urn(), _order(patient_urls[i % 20], f"{tag}-{i}")))
    return entries, patient_urls


async def _search_total(client: httpx.AsyncClient, query: str) -> int:
    r = await client.get(f"/fhir/{query}&_total=accurate&_count=1000")
    assert r.status_code == 200, r.text
    return len([e for e in r.json().get("entry", []) if e["search"]["mode"] == "match"])


async def _post_bundle(client: httpx.AsyncClient, bundle: dict[str, Any]) -> httpx.Response:
    return await client.post("/fhir", json=bundle, headers=FHIR)


async def test_transaction_of_100_with_urn_uuid_references(client: httpx.AsyncClient) -> None:
    entries, patient_urls = _hundred("t100")
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["type"] == "transaction-response"
    assert len(result["entry"]) == 100
    assert all(e["response"]["status"].startswith("201") for e in result["entry"])
    # response entries keep the request order
    patient_ids = []
    for entry in result["entry"][:20]:
        location = entry["response"]["location"]
        assert location.startswith("Patient/") and location.endswith("/_history/1")
        patient_ids.append(location.split("/")[1])
    for i, entry in enumerate(result["entry"][20:]):
        assert entry["response"]["location"].startswith("ServiceRequest/")
        # the reference was rewritten to the id the patient got
        assert entry["resource"]["subject"]["reference"] == f"Patient/{patient_ids[i % 20]}"
    # and it is stored that way
    some = result["entry"][42]["response"]["location"].split("/_history")[0]
    stored = (await client.get(f"/fhir/{some}")).json()
    assert stored["subject"]["reference"] == f"Patient/{patient_ids[22 % 20]}"
    assert "urn:uuid" not in json.dumps(stored)
    assert await _search_total(client, f"ServiceRequest?subject=Patient/{patient_ids[0]}") == 4
    assert await _search_total(client, "Patient?_id=" + ",".join(patient_ids)) == 20


async def test_failing_entry_rolls_back_everything(client: httpx.AsyncClient) -> None:
    kept = {}
    for rid in ("keep", "keep2"):
        r = await client.put(
            f"/fhir/Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers=FHIR
        )
        kept[rid] = r.json()
    entries, _ = _hundred("rollback")
    # an update and a delete early on, which must be undone too
    entries.insert(
        5,
        {
            "resource": {"resourceType": "Patient", "id": "keep", "active": False},
            "request": {"method": "PUT", "url": "Patient/keep"},
        },
    )
    entries.insert(6, {"request": {"method": "DELETE", "url": "Patient/keep2"}})
    # an invalid resource at position 73 (status must be a code string)
    assert entries[73]["resource"]["resourceType"] == "ServiceRequest"
    entries[73]["resource"]["status"] = 12
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i.get("expression") == ["Bundle.entry[73]"] for i in outcome["issue"]), outcome
    # nothing landed
    assert await _search_total(client, "ServiceRequest?identifier=urn:radhub:test|rollback-0") == 0
    assert await _search_total(client, f"Patient?identifier={MRN}|rollback-0") == 0
    assert await _search_total(client, "ServiceRequest?status=active") == 0
    for rid, before in kept.items():
        after = await client.get(f"/fhir/Patient/{rid}")
        assert after.status_code == 200
        assert after.json() == before
    # and the server keeps working
    ok = await _post_bundle(client, _bundle("transaction", _hundred("again")[0]))
    assert ok.status_code == 200


async def test_transaction_processing_order(client: httpx.AsyncClient) -> None:
    """DELETE, then POST, then PUT, then GET, whatever order the entries come in."""
    await client.put(
        "/fhir/Patient/old", json={"resourceType": "Patient", "id": "old"}, headers=FHIR
    )
    new_url = _urn()
    entries = [
        {"request": {"method": "GET", "url": "Patient/upd"}},
        {"request": {"method": "GET", "url": "Patient?_id=old"}},
        {
            "resource": {"resourceType": "Patient", "id": "upd", "active": True},
            "request": {"method": "PUT", "url": "Patient/upd"},
        },
        _post(new_url, {"resourceType": "Patient", "active": False}),
        {"request": {"method": "DELETE", "url": "Patient/old"}},
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    # the GETs ran after the PUT and the DELETE
    assert out[0]["response"]["status"].startswith("200")
    assert out[0]["resource"]["active"] is True
    assert out[1]["resource"]["type"] == "searchset"
    assert out[1]["resource"].get("entry", []) == []
    assert out[2]["response"]["status"].startswith("201")
    assert out[3]["response"]["status"].startswith("201")
    assert out[4]["response"]["status"].startswith("204")
    assert (await client.get("/fhir/Patient/old")).status_code == 410


async def test_put_then_get_same_resource_sees_write(client: httpx.AsyncClient) -> None:
    url = _urn()
    entries = [
        _post(url, _patient("x1")),
        {
            "resource": {**_order(url, "order-x1"), "id": "fixed"},
            "request": {"method": "PUT", "url": "ServiceRequest/fixed"},
        },
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 200, r.text
    pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    order = (await client.get("/fhir/ServiceRequest/fixed")).json()
    assert order["subject"]["reference"] == f"Patient/{pid}"


async def test_conditional_references_and_if_none_exist(client: httpx.AsyncClient) -> None:
    existing = (await client.post("/fhir/Patient", json=_patient("cond-1"), headers=FHIR)).json()
    url = _urn()
    entries = [
        # conditional create of a patient that exists: no new patient, references resolve
        _post(url, _patient("cond-1", "Ignored"), ifNoneExist=f"identifier={MRN}|cond-1"),
        {"request": {"method": "POST", "url": "ServiceRequest"}, "resource": _order(url, "by-urn")},
        {
            "request": {"method": "POST", "url": "ServiceRequest"},
            "resource": _order(f"Patient?identifier={MRN}|cond-1", "by-condition"),
        },
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert out[0]["response"]["status"].startswith("200")
    assert out[0]["response"]["location"].startswith(f"Patient/{existing['id']}/")
    expected = f"Patient/{existing['id']}"
    assert out[1]["resource"]["subject"]["reference"] == expected
    assert out[2]["resource"]["subject"]["reference"] == expected
    assert await _search_total(client, f"Patient?identifier={MRN}|cond-1") == 1


async def test_unresolvable_conditional_reference_fails_transaction(
    client: httpx.AsyncClient,
) -> None:
    entries = [
        _post(_urn(), _patient("lonely")),
        {
            "request": {"method": "POST", "url": "ServiceRequest"},
            "resource": _order(f"Patient?identifier={MRN}|nobody", "dangling"),
        },
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code in (400, 404, 412), r.text
    assert await _search_total(client, f"Patient?identifier={MRN}|lonely") == 0


async def test_transaction_patch_and_conditional_forms(client: httpx.AsyncClient) -> None:
    await client.post("/fhir/Patient", json=_patient("p-1"), headers=FHIR)
    await client.post("/fhir/Patient", json=_patient("p-2"), headers=FHIR)
    target = (
        await client.put(
            "/fhir/Patient/patchme", json={"resourceType": "Patient", "id": "patchme"}, headers=FHIR
        )
    ).json()
    patch = [{"op": "add", "path": "/active", "value": True}]
    entries = [
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
            "request": {"method": "PATCH", "url": "Patient/patchme", "ifMatch": 'W/"1"'},
        },
        {
            "resource": _patient("p-1", "Updated"),
            "request": {"method": "PUT", "url": f"Patient?identifier={MRN}|p-1"},
        },
        {"request": {"method": "DELETE", "url": f"Patient?identifier={MRN}|p-2"}},
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 200, r.text
    patched = (await client.get("/fhir/Patient/patchme")).json()
    assert patched["active"] is True
    assert patched["meta"]["versionId"] == "2"
    assert target["meta"]["versionId"] == "1"
    found = (await client.get(f"/fhir/Patient?identifier={MRN}|p-1")).json()
    assert found["entry"][0]["resource"]["name"][0]["family"] == "Updated"
    assert await _search_total(client, f"Patient?identifier={MRN}|p-2") == 0


async def test_batch_entries_are_independent(client: httpx.AsyncClient) -> None:
    entries = [
        _post(_urn(), _patient("b-1")),
        _post(_urn(), {"resourceType": "Patient", "gender": 7}),  # invalid
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"request": {"method": "GET", "url": "Unknown/1"}},
        {"request": {"method": "BREW", "url": "Patient"}},
        "not even an object",
        _post(_urn(), _patient("b-2")),
        {
            "resource": {"resourceType": "Patient", "id": "b3"},
            "request": {"method": "PUT", "url": "Patient/b3"},
        },
    ]
    r = await _post_bundle(client, _bundle("batch", entries))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"][:3] for e in out["entry"]]
    assert statuses == ["201", "400", "404", "404", "400", "400", "201", "201"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert await _search_total(client, f"Patient?identifier={MRN}|b-1") == 1
    assert await _search_total(client, f"Patient?identifier={MRN}|b-2") == 1
    assert (await client.get("/fhir/Patient/b3")).status_code == 200


async def test_bundle_shapes_that_are_refused(client: httpx.AsyncClient) -> None:
    for body in (
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Bundle", "type": "transaction", "entry": {}},
        {"resourceType": "Patient"},
        [],
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {}}]},
    ):
        r = await _post_bundle(client, body)  # type: ignore[arg-type]
        assert r.status_code == 400, (body, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    empty = await _post_bundle(client, _bundle("transaction", []))
    assert empty.status_code == 200
    assert empty.json()["entry"] == []


async def test_overlapping_entries_fail_the_transaction(client: httpx.AsyncClient) -> None:
    """Spec: "If any resource identities overlap in steps 1-3, the transaction SHALL fail"."""
    await client.put(
        "/fhir/Patient/twice", json={"resourceType": "Patient", "id": "twice"}, headers=FHIR
    )
    for second in (
        {
            "resource": {"resourceType": "Patient", "id": "twice", "active": False},
            "request": {"method": "PUT", "url": "Patient/twice"},
        },
        {"request": {"method": "DELETE", "url": "Patient/twice"}},
        {
            "resource": {"resourceType": "Patient", "id": "twice", "gender": "male"},
            "request": {"method": "PUT", "url": "Patient?_id=twice"},
        },
    ):
        entries = [
            {
                "resource": {"resourceType": "Patient", "id": "twice", "active": True},
                "request": {"method": "PUT", "url": "Patient/twice"},
            },
            second,
        ]
        r = await _post_bundle(client, _bundle("transaction", entries))
        assert r.status_code == 400, (second, r.text)
        current = (await client.get("/fhir/Patient/twice")).json()
        assert current["meta"]["versionId"] == "1"
    # reading what is written is not an overlap
    entries = [
        {
            "resource": {"resourceType": "Patient", "id": "twice", "active": True},
            "request": {"method": "PUT", "url": "Patient/twice"},
        },
        {"request": {"method": "GET", "url": "Patient/twice"}},
    ]
    assert (await _post_bundle(client, _bundle("transaction", entries))).status_code == 200


async def test_unresolved_urn_uuid_reference_fails(client: httpx.AsyncClient) -> None:
    entries = [
        _post(_urn(), _patient("dangling-1")),
        _post(_urn(), _order(_urn(), "dangling")),
    ]
    r = await _post_bundle(client, _bundle("transaction", entries))
    assert r.status_code == 400, r.text
    assert "urn:uuid" in r.text
    assert await _search_total(client, f"Patient?identifier={MRN}|dangling-1") == 0
