"""read, vread, create, update, patch, delete and conditional read through HTTP,
for each of the five main types. See https://hl7.org/fhir/R4/http.html"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
BASE = "http://radhub.test/fhir"


def _without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


async def _create(client: httpx.AsyncClient, resource: dict[str, Any]) -> httpx.Response:
    body = {k: v for k, v in resource.items() if k != "id"}
    r = await client.post(f"/fhir/{resource['resourceType']}", json=body, headers=FHIR)
    assert r.status_code == 201, r.text
    return r


async def test_create_assigns_id_and_version_headers(
    client: httpx.AsyncClient, main_example: dict[str, Any]
) -> None:
    rtype = main_example["resourceType"]
    r = await _create(client, main_example)
    body = r.json()
    rid = body["id"]
    assert rid != main_example["id"]  # the server assigns the id on create
    assert r.headers["location"] == f"{BASE}/{rtype}/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    last_updated = datetime.fromisoformat(body["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert abs(last_updated - datetime.now(UTC)) < timedelta(minutes=1)
    modified = parsedate_to_datetime(r.headers["last-modified"])
    assert modified == last_updated.replace(microsecond=0)
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert _without_server_fields(body) == _without_server_fields(main_example)


async def test_read_vread_update_history_delete_cycle(
    client: httpx.AsyncClient, main_example: dict[str, Any]
) -> None:
    rtype = main_example["resourceType"]
    created = (await _create(client, main_example)).json()
    rid = created["id"]

    read = await client.get(f"/fhir/{rtype}/{rid}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["etag"] == 'W/"1"'
    assert "last-modified" in read.headers

    changed = {**created, "text": {"status": "generated", "div": "<div>v2</div>"}}
    changed["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml">v2</div>'
    upd = await client.put(f"/fhir/{rtype}/{rid}", json=changed, headers=FHIR)
    assert upd.status_code == 200, upd.text
    assert upd.headers["etag"] == 'W/"2"'
    assert upd.json()["meta"]["versionId"] == "2"
    assert upd.json()["text"]["div"] == changed["text"]["div"]
    assert upd.json()["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]

    v1 = await client.get(f"/fhir/{rtype}/{rid}/_history/1")
    assert v1.status_code == 200
    assert v1.json() == created
    assert v1.headers["etag"] == 'W/"1"'
    v2 = await client.get(f"/fhir/{rtype}/{rid}/_history/2")
    assert v2.json()["meta"]["versionId"] == "2"
    assert (await client.get(f"/fhir/{rtype}/{rid}/_history/3")).status_code == 404

    deleted = await client.delete(f"/fhir/{rtype}/{rid}")
    assert deleted.status_code == 204
    gone = await client.get(f"/fhir/{rtype}/{rid}")
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    # the versions before the deletion stay readable
    assert (await client.get(f"/fhir/{rtype}/{rid}/_history/2")).status_code == 200

    hist = (await client.get(f"/fhir/{rtype}/{rid}/_history")).json()
    assert hist["type"] == "history"
    assert hist["total"] == 3
    methods = [e["request"]["method"] for e in hist["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in hist["entry"][0]

    # re-create through PUT: a new version, 201
    again = await client.put(f"/fhir/{rtype}/{rid}", json=created, headers=FHIR)
    assert again.status_code == 201, again.text
    assert again.json()["meta"]["versionId"] == "4"
    assert (await client.get(f"/fhir/{rtype}/{rid}")).status_code == 200


async def test_update_with_client_id_creates(
    client: httpx.AsyncClient, main_example: dict[str, Any]
) -> None:
    rtype, rid = main_example["resourceType"], main_example["id"]
    assert (await client.get(f"/fhir/{rtype}/{rid}")).status_code == 404
    r = await client.put(f"/fhir/{rtype}/{rid}", json=main_example, headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{BASE}/{rtype}/{rid}/_history/1"
    assert r.json()["id"] == rid
    r2 = await client.put(f"/fhir/{rtype}/{rid}", json=main_example, headers=FHIR)
    assert r2.status_code == 200
    assert r2.headers["etag"] == 'W/"2"'


async def test_delete_unknown_is_idempotent(client: httpx.AsyncClient) -> None:
    assert (await client.delete("/fhir/Patient/never-was")).status_code in (200, 204)
    assert (await client.get("/fhir/Patient/never-was")).status_code == 404


async def test_read_unknown_is_404_outcome(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Patient/nobody")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "not-found"


async def test_vread_bad_version_is_404(client: httpx.AsyncClient, example: Any) -> None:
    rid = (await _create(client, example("patient-example.json"))).json()["id"]
    for bad in ("0", "abc", "-1", "99"):
        assert (await client.get(f"/fhir/Patient/{rid}/_history/{bad}")).status_code == 404


# -- patch -----------------------------------------------------------------------------


async def test_json_patch(client: httpx.AsyncClient, main_example: dict[str, Any]) -> None:
    rtype = main_example["resourceType"]
    rid = (await _create(client, main_example)).json()["id"]
    ops = [{"op": "add", "path": "/language", "value": "fr"}]
    r = await client.patch(f"/fhir/{rtype}/{rid}", json=ops, headers=PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "fr"
    assert r.headers["etag"] == 'W/"2"'
    assert (await client.get(f"/fhir/{rtype}/{rid}")).json()["language"] == "fr"


async def test_patch_errors(client: httpx.AsyncClient, example: Any) -> None:
    rid = (await _create(client, example("patient-example.json"))).json()["id"]
    url = f"/fhir/Patient/{rid}"
    # not a patch document
    r = await client.patch(url, json={"op": "add"}, headers=PATCH)
    assert r.status_code in (400, 422)
    # a test that fails
    r = await client.patch(
        url, json=[{"op": "test", "path": "/gender", "value": "x"}], headers=PATCH
    )
    assert r.status_code in (400, 422)
    # a path that does not exist
    r = await client.patch(url, json=[{"op": "remove", "path": "/nope/0"}], headers=PATCH)
    assert r.status_code in (400, 422)
    # an unknown operation
    r = await client.patch(url, json=[{"op": "frobnicate", "path": "/a"}], headers=PATCH)
    assert r.status_code in (400, 422)
    # the result is not a valid Patient
    r = await client.patch(url, json=[{"op": "add", "path": "/gender", "value": 42}], headers=PATCH)
    assert r.status_code in (400, 422)
    # changing the id
    r = await client.patch(
        url, json=[{"op": "replace", "path": "/id", "value": "x"}], headers=PATCH
    )
    assert r.status_code in (400, 422)
    # a FHIR body is not a patch
    r = await client.patch(url, json=[], headers=FHIR)
    assert r.status_code == 415
    for bad in (r,):
        assert bad.json()["resourceType"] == "OperationOutcome"
    # nothing of that changed the resource
    current = await client.get(url)
    assert current.headers["etag"] == 'W/"1"'
    # patching what is not there
    r = await client.patch("/fhir/Patient/nobody", json=[], headers=PATCH)
    assert r.status_code == 404


# -- versioning and conditional read ---------------------------------------------------


async def test_if_match(client: httpx.AsyncClient, example: Any) -> None:
    created = (await _create(client, example("patient-example.json"))).json()
    url = f"/fhir/Patient/{created['id']}"
    ok = await client.put(url, json=created, headers={**FHIR, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = await client.put(url, json=created, headers={**FHIR, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    junk = await client.put(url, json=created, headers={**FHIR, "If-Match": "garbage"})
    assert junk.status_code == 412
    ops = [{"op": "add", "path": "/active", "value": False}]
    stale_patch = await client.patch(url, json=ops, headers={**PATCH, "If-Match": 'W/"1"'})
    assert stale_patch.status_code == 412
    fresh_patch = await client.patch(url, json=ops, headers={**PATCH, "If-Match": 'W/"2"'})
    assert fresh_patch.status_code == 200
    assert (await client.get(url)).headers["etag"] == 'W/"3"'


async def test_conditional_read(client: httpx.AsyncClient, example: Any) -> None:
    r = await _create(client, example("patient-example.json"))
    url = f"/fhir/Patient/{r.json()['id']}"
    etag, modified = r.headers["etag"], r.headers["last-modified"]

    same = await client.get(url, headers={"If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert (await client.get(url, headers={"If-None-Match": 'W/"7"'})).status_code == 200

    assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(modified) - timedelta(hours=1), usegmt=True)
    assert (await client.get(url, headers={"If-Modified-Since": earlier})).status_code == 200
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert (await client.get(url, headers={"If-Modified-Since": later})).status_code == 304

    # after an update the old ETag no longer matches
    await client.put(url, json=r.json(), headers=FHIR)
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 200


# -- Prefer ----------------------------------------------------------------------------


async def test_prefer_return(client: httpx.AsyncClient, example: Any) -> None:
    patient = example("patient-example.json")
    del patient["id"]
    minimal = await client.post(
        "/fhir/Patient", json=patient, headers={**FHIR, "Prefer": "return=minimal"}
    )
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"].startswith(f"{BASE}/Patient/")
    assert minimal.headers["etag"] == 'W/"1"'

    outcome = await client.post(
        "/fhir/Patient", json=patient, headers={**FHIR, "Prefer": "return=OperationOutcome"}
    )
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert "location" in outcome.headers

    full = await client.post(
        "/fhir/Patient", json=patient, headers={**FHIR, "Prefer": "return=representation"}
    )
    assert full.status_code == 201
    assert full.json()["resourceType"] == "Patient"

    rid = full.json()["id"]
    upd = await client.put(
        f"/fhir/Patient/{rid}", json=full.json(), headers={**FHIR, "Prefer": "return=minimal"}
    )
    assert upd.status_code == 200
    assert upd.content == b""
    assert upd.headers["etag"] == 'W/"2"'
    ops = [{"op": "add", "path": "/active", "value": True}]
    pat = await client.patch(
        f"/fhir/Patient/{rid}", json=ops, headers={**PATCH, "Prefer": "return=OperationOutcome"}
    )
    assert pat.status_code == 200
    assert pat.json()["resourceType"] == "OperationOutcome"


async def test_meta_is_servers_but_tags_are_kept(client: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "Patient",
        "id": "ignored",
        "meta": {
            "versionId": "99",
            "lastUpdated": "2001-01-01T00:00:00Z",
            "tag": [{"system": "urn:t", "code": "x"}],
        },
    }
    r = await client.post("/fhir/Patient", json=body, headers=FHIR)
    assert r.status_code == 201
    meta = r.json()["meta"]
    assert meta["versionId"] == "1"
    assert not meta["lastUpdated"].startswith("2001")
    assert meta["tag"] == [{"system": "urn:t", "code": "x"}]
    assert r.json()["id"] != "ignored"


async def test_other_supported_types_round_trip(client: httpx.AsyncClient, example: Any) -> None:
    for name in (
        "practitioner-example.json",
        "organization-example.json",
        "location-example.json",
        "encounter-example.json",
        "observation-example.json",
        "procedure-example.json",
        "endpoint-example-wadors.json",
        "schedule-example.json",
        "slot-example.json",
        "practitionerrole-example.json",
    ):
        resource = example(name)
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        r = await client.put(url, json=resource, headers=FHIR)
        assert r.status_code == 201, (name, r.text)
        assert (await client.get(url)).json()["id"] == resource["id"]


async def test_summary_count_gives_the_total(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    r = await client.get("/fhir/Patient?_summary=count&_count=2")
    assert r.status_code == 200
    assert r.json()["total"] == 3
    assert r.json().get("entry", []) == []
    # no entries, so no pages to move between: only the self link
    assert [link["relation"] for link in r.json()["link"]] == ["self"]


async def test_summary_and_elements_on_read(client: httpx.AsyncClient, example: Any) -> None:
    rid = (await _create(client, example("patient-example.json"))).json()["id"]
    r = await client.get(f"/fhir/Patient/{rid}?_elements=gender")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"resourceType", "id", "meta", "gender"}
    assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])
    summary = (await client.get(f"/fhir/Patient/{rid}?_summary=true")).json()
    assert "name" in summary and "text" not in summary


async def test_a_plain_create_is_one_write_a_conditional_one_a_transaction(
    client: httpx.AsyncClient, app: Any, monkeypatch: Any
) -> None:
    """Nothing to look up before a plain create: it is committed in one step, not
    in a transaction of three hand-offs to the writer (If-None-Exist needs one)."""
    store = app.state.services.store
    used: list[str] = []
    transaction, write_many = store.transaction, store.write_many

    def counted_transaction() -> Any:
        used.append("transaction")
        return transaction()

    async def counted_write_many(versions: Any) -> Any:
        types = sorted({v.resource_type for v in versions} - {"AuditEvent"})  # the trail's own
        if types:
            used.append(f"write_many {len(versions)} {' '.join(types)}")
        return await write_many(versions)

    monkeypatch.setattr(store, "transaction", counted_transaction)
    monkeypatch.setattr(store, "write_many", counted_write_many)
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "1"}]}
    created = (await _create(client, patient)).json()
    assert used == ["write_many 1 Patient"]
    read = await client.get(f"/fhir/Patient/{created['id']}")
    assert read.json() == created
    used.clear()
    again = await client.post(
        "/fhir/Patient", json=patient, headers={**FHIR, "If-None-Exist": "identifier=urn:t|1"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == created["id"]
    assert used == ["transaction"]
