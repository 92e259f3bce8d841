"""Tokens, scopes, the patient compartment and the audit trail, through HTTP.
See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smart.keys import KeyRing
from smart.tokens import mint_access_token
from tests.conftest import app_token

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://radhub.test"
Mint = Callable[..., str]


def _sr(id: str, patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def _report(id: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": id,
        "status": "final",
        "code": {"text": "CT head"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _appointment(id: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": id,
        "status": "booked",
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
    }


def _study(id: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": id,
        "status": "available",
        "subject": {"reference": f"Patient/{patient}"},
    }


@pytest.fixture
async def world(client: httpx.AsyncClient) -> None:
    """Two patients, A and B, each with an order, a report, an appointment and a study;
    plus a practitioner (shared data)."""
    resources: list[dict[str, Any]] = [{"resourceType": "Practitioner", "id": "doc"}]
    for p in ("A", "B"):
        resources += [
            {"resourceType": "Patient", "id": p, "name": [{"family": f"Patient{p}"}]},
            _sr(f"sr{p}", p),
            _report(f"dr{p}", p),
            _appointment(f"ap{p}", p),
            _study(f"is{p}", p),
        ]
    for resource in resources:
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        r = await client.put(url, json=resource, headers=FHIR)
        assert r.status_code == 201, r.text


async def _as(app: FastAPI, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


@pytest.fixture
async def patient_a(app: FastAPI, mint: Mint, world: None) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _as(app, mint("patient/*.rs", patient="A")):
        yield c


@pytest.fixture
async def patient_a_writer(
    app: FastAPI, mint: Mint, world: None
) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _as(app, mint("patient/*.cruds", patient="A")):
        yield c


def _ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    }


# -- authentication --------------------------------------------------------------------


def _challenge(r: httpx.Response) -> str:
    assert r.status_code == 401, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    return challenge


REQUESTS = [
    ("GET", "/fhir/Patient/A", None),
    ("GET", "/fhir/Patient", None),
    ("GET", "/fhir/Patient/_history", None),
    ("GET", "/fhir/_history", None),
    ("GET", "/fhir/Patient/A/_history/1", None),
    ("POST", "/fhir/Patient", {"resourceType": "Patient"}),
    ("PUT", "/fhir/Patient/A", {"resourceType": "Patient", "id": "A"}),
    ("DELETE", "/fhir/Patient/A", None),
    ("POST", "/fhir", {"resourceType": "Bundle", "type": "batch"}),
]


async def test_no_token_is_401(anon: httpx.AsyncClient, world: None) -> None:
    for method, url, body in REQUESTS:
        r = await anon.request(method, url, json=body, headers=FHIR if body else {})
        _challenge(r)
    assert (await anon.get("/fhir/metadata")).status_code == 200
    # nothing was changed
    assert (await anon.get("/fhir/Patient/A")).status_code == 401


async def test_bad_tokens_are_401(app: FastAPI, mint: Mint, tmp_path: Path, world: None) -> None:
    identity = app.state.identity
    other_ring = KeyRing.open(tmp_path / "elsewhere")
    tokens = {
        "garbage": "garbage",
        "not-a-jwt": "a.b.c",
        "foreign-key": mint_access_token(
            other_ring,
            issuer=identity.issuer,
            audience=identity.audience,
            scope="system/*.cruds",
            subject="x",
        ),
        "wrong-audience": mint_access_token(
            app.state.keyring,
            issuer=identity.issuer,
            audience="https://elsewhere/fhir",
            scope="system/*.cruds",
            subject="x",
        ),
        "expired": mint("system/*.cruds", ttl=60, now=time.time() - 3600),
        "tampered": mint("system/*.r")[:-4] + "AAAA",
    }
    for name, token in tokens.items():
        async for c in _as(app, token):
            for method, url, body in REQUESTS:
                r = await c.request(method, url, json=body, headers=FHIR if body else {})
                assert 'error="invalid_token"' in _challenge(r), name
    async for c in _as(app, None):
        r = await c.get("/fhir/Patient/A", headers={"Authorization": "Basic dXNlcjpwdw=="})
        _challenge(r)
    # still unchanged
    async for c in _as(app, mint()):
        assert (await c.get("/fhir/Patient/A")).json()["meta"]["versionId"] == "1"


async def test_missing_scope_is_403(app: FastAPI, mint: Mint, world: None) -> None:
    async for c in _as(app, mint("system/Patient.rs")):
        assert (await c.get("/fhir/Patient/A")).status_code == 200
        assert (await c.get("/fhir/Patient")).status_code == 200
        for r in (
            await c.get("/fhir/ServiceRequest/srA"),
            await c.get("/fhir/ServiceRequest"),
            await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR),
            await c.put(
                "/fhir/Patient/A", json={"resourceType": "Patient", "id": "A"}, headers=FHIR
            ),
            await c.delete("/fhir/Patient/A"),
            await c.get("/fhir/_history"),
        ):
            assert r.status_code == 403, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
    async for c in _as(app, mint("system/Patient.r")):
        assert (await c.get("/fhir/Patient/A")).status_code == 200
        assert (await c.get("/fhir/Patient")).status_code == 403  # search needs "s"
    async for c in _as(app, mint("openid fhirUser")):
        assert (await c.get("/fhir/Patient/A")).status_code == 403
    async for c in _as(app, mint("system/*.rs")):
        assert (await c.get("/fhir/Patient/A")).json()["meta"]["versionId"] == "1"


async def test_v1_scopes(app: FastAPI, mint: Mint, world: None) -> None:
    async for c in _as(app, mint("user/*.read")):
        assert (await c.get("/fhir/ServiceRequest/srB")).status_code == 200
        r = await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
        assert r.status_code == 403
    async for c in _as(app, mint("user/Patient.write user/Patient.read")):
        r = await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
        assert r.status_code == 201


# -- the patient compartment -----------------------------------------------------------


async def test_patient_token_reads_only_its_compartment(patient_a: httpx.AsyncClient) -> None:
    for own, other in (
        ("Patient/A", "Patient/B"),
        ("ServiceRequest/srA", "ServiceRequest/srB"),
        ("DiagnosticReport/drA", "DiagnosticReport/drB"),
        ("Appointment/apA", "Appointment/apB"),
        ("ImagingStudy/isA", "ImagingStudy/isB"),
    ):
        assert (await patient_a.get(f"/fhir/{own}")).status_code == 200, own
        assert (await patient_a.get(f"/fhir/{own}/_history/1")).status_code == 200, own
        assert (await patient_a.get(f"/fhir/{own}/_history")).status_code == 200, own
        for url in (f"/fhir/{other}", f"/fhir/{other}/_history/1", f"/fhir/{other}/_history"):
            r = await patient_a.get(url)
            assert r.status_code == 404, (url, r.text)
    # not revealed by conditional reads either
    r = await patient_a.get("/fhir/Patient/B", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 404


async def test_patient_token_searches_only_its_compartment(
    patient_a: httpx.AsyncClient,
) -> None:
    expected = {
        "Patient": {"Patient/A"},
        "ServiceRequest": {"ServiceRequest/srA"},
        "DiagnosticReport": {"DiagnosticReport/drA"},
        "Appointment": {"Appointment/apA"},
        "ImagingStudy": {"ImagingStudy/isA"},
    }
    for rtype, ids in expected.items():
        r = await patient_a.get(f"/fhir/{rtype}?_total=accurate")
        assert r.status_code == 200, r.text
        assert _ids(r.json()) == ids, rtype
        assert r.json().get("total", 1) == 1
    # asking for B explicitly finds nothing
    r = await patient_a.get("/fhir/ServiceRequest?subject=Patient/B")
    assert _ids(r.json()) == set()
    r = await patient_a.get("/fhir/Patient?_id=B")
    assert _ids(r.json()) == set()
    # compartment search on another patient finds nothing
    r = await patient_a.get("/fhir/Patient/B/ServiceRequest")
    assert r.status_code in (200, 403, 404)
    if r.status_code == 200:
        assert _ids(r.json()) == set()
    # shared data needs a scope naming the type
    assert (await patient_a.get("/fhir/Practitioner/doc")).status_code in (403, 404)
    # type and system history would cross compartments
    assert (await patient_a.get("/fhir/ServiceRequest/_history")).status_code == 403
    assert (await patient_a.get("/fhir/_history")).status_code == 403


async def test_patient_token_includes_stay_in_compartment(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient
) -> None:
    # A's order names B as requester: following it must not reveal B
    order = _sr("srAB", "A", requester={"reference": "Patient/B"})
    assert (await client.put("/fhir/ServiceRequest/srAB", json=order, headers=FHIR)).is_success
    r = await patient_a.get("/fhir/ServiceRequest?_id=srAB&_include=ServiceRequest:requester")
    assert r.status_code in (200, 403), r.text
    if r.status_code == 200:
        assert "Patient/B" not in _ids(r.json(), "include")
    r = await patient_a.get("/fhir/Patient?_revinclude=ServiceRequest:subject")
    if r.status_code == 200:
        assert _ids(r.json(), "include") <= {"ServiceRequest/srA", "ServiceRequest/srAB"}


async def test_patient_token_cannot_write(patient_a: httpx.AsyncClient) -> None:
    r = await patient_a.post("/fhir/ServiceRequest", json=_sr("x", "A"), headers=FHIR)
    assert r.status_code == 403
    r = await patient_a.put("/fhir/ServiceRequest/srA", json=_sr("srA", "A"), headers=FHIR)
    assert r.status_code == 403
    assert (await patient_a.delete("/fhir/ServiceRequest/srA")).status_code == 403


async def test_patient_writer_stays_in_compartment(
    client: httpx.AsyncClient, patient_a_writer: httpx.AsyncClient
) -> None:
    w = patient_a_writer
    # own compartment: allowed
    r = await w.post("/fhir/ServiceRequest", json=_sr("ignored", "A"), headers=FHIR)
    assert r.status_code == 201, r.text
    r = await w.put(
        "/fhir/ServiceRequest/srA", json=_sr("srA", "A", priority="urgent"), headers=FHIR
    )
    assert r.status_code == 200, r.text
    # into another compartment: refused
    r = await w.post("/fhir/ServiceRequest", json=_sr("x", "B"), headers=FHIR)
    assert r.status_code == 403
    r = await w.put("/fhir/ServiceRequest/srA", json=_sr("srA", "B"), headers=FHIR)
    assert r.status_code == 403
    r = await w.put("/fhir/ServiceRequest/srB", json=_sr("srB", "A"), headers=FHIR)
    assert r.status_code in (403, 404)
    r = await w.put("/fhir/ServiceRequest/newB", json=_sr("newB", "B"), headers=FHIR)
    assert r.status_code == 403
    ops = [{"op": "replace", "path": "/subject/reference", "value": "Patient/B"}]
    r = await w.patch(
        "/fhir/ServiceRequest/srA",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 403
    r = await w.patch(
        "/fhir/ServiceRequest/srB", json=[], headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 404
    r = await w.delete("/fhir/ServiceRequest/srB")
    assert r.status_code in (403, 404)
    r = await w.delete("/fhir/ServiceRequest?_id=srB")
    assert r.status_code in (200, 204, 403, 404)
    r = await w.put("/fhir/Patient/B", json={"resourceType": "Patient", "id": "B"}, headers=FHIR)
    assert r.status_code in (403, 404)
    # conditional create must not find (and return) B's resource
    r = await w.post(
        "/fhir/ServiceRequest", json=_sr("z", "A"), headers={**FHIR, "If-None-Exist": "_id=srB"}
    )
    assert r.status_code == 201
    assert r.json()["subject"]["reference"] == "Patient/A"
    # a transaction touching B is refused as a whole
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": _sr("t1", "A", priority="stat"),
                "request": {"method": "PUT", "url": "ServiceRequest/t1"},
            },
            {"request": {"method": "DELETE", "url": "ServiceRequest/srB"}},
            {"resource": _sr("t2", "B"), "request": {"method": "PUT", "url": "ServiceRequest/t2"}},
        ],
    }
    r = await w.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code in (403, 404), r.text
    assert (await w.get("/fhir/ServiceRequest/t1")).status_code == 404
    # B's data is untouched
    for url in ("/fhir/ServiceRequest/srB", "/fhir/Patient/B"):
        got = await client.get(url)
        assert got.status_code == 200
        assert got.json()["meta"]["versionId"] == "1", url
    assert (await client.get("/fhir/ServiceRequest/newB")).status_code == 404
    assert (await client.get("/fhir/ServiceRequest/t2")).status_code == 404


# -- the audit trail -------------------------------------------------------------------


async def test_interactions_are_audited(
    app: FastAPI,
    mint: Mint,
    client: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    flush_audit: Callable[[], Awaitable[None]],
) -> None:
    created = await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    rid = created.json()["id"]
    await client.get(f"/fhir/Patient/{rid}")
    await client.get("/fhir/Patient/nobody")
    await client.delete(f"/fhir/Patient/{rid}")
    await anon.get(f"/fhir/Patient/{rid}")
    async for c in _as(
        app, mint("patient/*.rs", patient=rid, subject="pat-app", client_id="portal")
    ):
        await c.get(f"/fhir/Patient/{rid}/_history/1")
    await flush_audit()

    r = await client.get("/fhir/AuditEvent?_count=100")
    assert r.status_code == 200, r.text
    events = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]

    def find(code: str, **want: str) -> list[dict[str, Any]]:
        found = []
        for ev in events:
            if ev["subtype"][0]["code"] != code:
                continue
            whats = [ent["what"].get("reference") for ent in ev.get("entity", [])]
            if "what" in want and want["what"] not in whats:
                continue
            if "outcome" in want and ev["outcome"] != want["outcome"]:
                continue
            found.append(ev)
        return found

    target = f"Patient/{rid}"
    assert find("create", what=target, outcome="0")  # the id from its Location
    assert find("read", what=target, outcome="0")
    assert find("read", what="Patient/nobody", outcome="4")
    assert find("delete", what=target, outcome="0")
    anonymous = [
        ev
        for ev in find("read", what=target, outcome="4")
        if ev["agent"][0]["who"].get("display") == "anonymous"
    ]
    assert anonymous
    vread = find("vread", what=target)
    assert len(vread) == 1
    agents = vread[0]["agent"]
    assert agents[0]["who"]["identifier"]["value"] == "pat-app"
    assert any(a["who"].get("identifier", {}).get("value") == "portal" for a in agents[1:])
    assert vread[0]["action"] == "R"
    assert all(ev["meta"]["versionId"] == "1" for ev in events)


async def test_audit_events_cannot_be_changed(
    client: httpx.AsyncClient, flush_audit: Callable[[], Awaitable[None]]
) -> None:
    await client.get("/fhir/Patient/whoever")
    await flush_audit()
    events = (await client.get("/fhir/AuditEvent")).json()["entry"]
    event = events[0]["resource"]
    eid = event["id"]
    url = f"/fhir/AuditEvent/{eid}"
    fake = {k: v for k, v in event.items() if k not in ("id", "meta")}
    attempts = [
        await client.post("/fhir/AuditEvent", json=fake, headers=FHIR),
        await client.put(url, json={**event, "outcome": "0"}, headers=FHIR),
        await client.put("/fhir/AuditEvent/new-one", json={**fake, "id": "new-one"}, headers=FHIR),
        await client.patch(
            url,
            json=[{"op": "replace", "path": "/outcome", "value": "0"}],
            headers={"Content-Type": "application/json-patch+json"},
        ),
        await client.delete(url),
        await client.delete(f"/fhir/AuditEvent?_id={eid}"),
        await client.put(f"/fhir/AuditEvent?_id={eid}", json=event, headers=FHIR),
    ]
    for r in attempts:
        assert r.status_code in (403, 405), r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    for kind in ("transaction", "batch"):
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"resource": fake, "request": {"method": "POST", "url": "AuditEvent"}},
                {"request": {"method": "DELETE", "url": f"AuditEvent/{eid}"}},
            ],
        }
        r = await client.post("/fhir", json=bundle, headers=FHIR)
        if kind == "transaction":
            assert r.status_code in (403, 405), r.text
        else:
            statuses = [e["response"]["status"][:3] for e in r.json()["entry"]]
            assert statuses in (["403", "403"], ["405", "405"]), statuses
    after = await client.get(url)
    assert after.status_code == 200
    assert after.json() == event


async def test_audit_events_are_searchable(
    app: FastAPI,
    mint: Mint,
    client: httpx.AsyncClient,
    flush_audit: Callable[[], Awaitable[None]],
    world: None,
) -> None:
    async for c in _as(app, mint("patient/*.rs", patient="A", subject="portal-user")):
        assert (await c.get("/fhir/ServiceRequest/srA")).status_code == 200
    await client.get("/fhir/DiagnosticReport/drB")
    await flush_audit()

    def matches(r: httpx.Response) -> list[dict[str, Any]]:
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]

    by_entity = matches(await client.get("/fhir/AuditEvent?entity=ServiceRequest/srA"))
    assert sorted(ev["subtype"][0]["code"] for ev in by_entity) == ["read", "update"]
    (read,) = [ev for ev in by_entity if ev["subtype"][0]["code"] == "read"]
    assert read["agent"][0]["who"]["identifier"]["value"] == "portal-user"
    by_patient = matches(await client.get("/fhir/AuditEvent?patient=Patient/A"))
    assert any(ev["id"] == read["id"] for ev in by_patient)
    assert matches(await client.get("/fhir/AuditEvent?subtype=read&entity=DiagnosticReport/drB"))
    assert matches(await client.get("/fhir/AuditEvent?outcome=0&action=R"))
    # the trail is for administrators: not even the events about its own patient
    # for a patient app (test_the_audit_trail_is_for_administrators_only)
    async for c in _as(app, mint("patient/AuditEvent.rs", patient="A")):
        assert (await c.get("/fhir/AuditEvent")).status_code == 403


async def test_audit_trail_is_flushed_on_shutdown(tmp_path: Path) -> None:
    from fhir_server.app import create_app
    from fhir_server.settings import Settings

    settings = Settings(
        data_dir=tmp_path / "d", base_url=BASE, audit_flush_interval=60, audit_process=False
    )

    async def session(work: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            token = app_token(application, subject="shutdown")
            async for c in _as(application, token):
                await work(c)

    async def twenty_reads(c: httpx.AsyncClient) -> None:
        for i in range(20):
            assert (await c.get(f"/fhir/Patient/p{i}")).status_code == 404

    counted: list[int] = []

    async def count(c: httpx.AsyncClient) -> None:
        r = await c.get("/fhir/AuditEvent?_count=100")
        counted.append(len(r.json().get("entry", [])))

    await session(twenty_reads)  # the writer never ran: only close() can have flushed
    await session(count)
    assert counted == [20]


async def test_the_audit_trail_is_for_administrators_only(
    app: FastAPI,
    client: httpx.AsyncClient,
    mint: Mint,
    flush_audit: Callable[[], Awaitable[None]],
) -> None:
    created = await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    pid = created.json()["id"]
    async for c in _as(app, mint("patient/*.rs", patient=pid)):
        await c.get(f"/fhir/Patient/{pid}")  # audited with the patient as an entity
    await flush_audit()
    own = await client.get(f"/fhir/AuditEvent?patient={pid}")
    eid = next(e["resource"]["id"] for e in own.json()["entry"] if e["search"]["mode"] == "match")
    refused = {
        "patient app, own compartment": mint("patient/*.rs", patient=pid),
        "patient app asking for AuditEvent": mint("patient/AuditEvent.rs", patient=pid),
        "radiologist": mint("user/*.rs", roles=["radiologist"], fhir_user="Practitioner/7"),
    }
    for who, token in refused.items():
        async for c in _as(app, token):
            search = await c.get(f"/fhir/AuditEvent?patient={pid}")
            read = await c.get(f"/fhir/AuditEvent/{eid}")
            assert (search.status_code, read.status_code) == (403, 403), who
    allowed = {
        "admin user": mint("user/*.rs", roles=["admin"], fhir_user="Practitioner/1"),
        "backend (system scope)": mint("system/AuditEvent.rs"),
    }
    for who, token in allowed.items():
        async for c in _as(app, token):
            assert (await c.get(f"/fhir/AuditEvent/{eid}")).status_code == 200, who
