"""Search through the API: patient-scoped tokens stay in their compartment through
chains, ``_has``, ``_include``, ``_revinclude``, system search and totals; the
lenient/strict error handling; ``_summary``; local absolute and contained
references; ``$everything`` (run as an interaction, as the route adds nothing).
See https://hl7.org/fhir/R4/search.html and
https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.errors import NotFound
from fhir_server.interactions.everything import everything

FHIR = {"Content-Type": "application/fhir+json"}
STRICT = {"Prefer": "handling=strict"}
BASE = "http://radhub.test"
Mint = Callable[..., str]


def _order(id: str, patient: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


WORLD: list[dict[str, Any]] = [
    {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Doctor"}]},
    {"resourceType": "Patient", "id": "A", "name": [{"family": "Alpha"}], "gender": "female"},
    {"resourceType": "Patient", "id": "B", "name": [{"family": "Bravo"}], "gender": "male"},
    _order("srA", "A", requester={"reference": "Practitioner/doc"}),
    _order("srB", "B"),
    # A's order naming B, and B's order naming A: outside the other's compartment
    _order("srAB", "A", "completed", requester={"reference": "Patient/B"}),
    _order("srBA", "B", "revoked", requester={"reference": "Patient/A"}),
    {"resourceType": "ImagingStudy", "id": "isA", "status": "available",
     "subject": {"reference": "Patient/A"}, "basedOn": [{"reference": "ServiceRequest/srA"}]},
    {"resourceType": "ImagingStudy", "id": "isB", "status": "available",
     "subject": {"reference": "Patient/B"}, "basedOn": [{"reference": "ServiceRequest/srB"}]},
    {"resourceType": "DiagnosticReport", "id": "drA", "status": "final", "code": {"text": "CT"},
     "subject": {"reference": "Patient/A"}},
]  # fmt: skip


@pytest.fixture
async def world(client: httpx.AsyncClient) -> None:
    for resource in WORLD:
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        r = await client.put(url, json=resource, headers=FHIR)
        assert r.status_code == 201, r.text


async def _as(app: FastAPI, token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


@pytest.fixture
async def patient_a(app: FastAPI, mint: Mint, world: None) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _as(app, mint("patient/*.rs", patient="A")):
        yield c


def _ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    }


async def _both(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient, url: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same search as the system and as patient A."""
    system, patient = await client.get(url), await patient_a.get(url)
    assert system.status_code == 200, system.text
    assert patient.status_code == 200, patient.text
    return system.json(), patient.json()


# -- security ----------------------------------------------------------------------------


async def test_chain_cannot_probe_outside_the_compartment(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient
) -> None:
    url = "/fhir/ServiceRequest?requester:Patient.name=bravo"
    system, patient = await _both(client, patient_a, url)
    assert _ids(system) == {"ServiceRequest/srAB"}
    assert _ids(patient) == set()
    url = "/fhir/ServiceRequest?subject:Patient.name=alpha"  # A's own, through A
    assert _ids((await patient_a.get(url)).json()) == {"ServiceRequest/srA", "ServiceRequest/srAB"}


async def test_has_cannot_probe_outside_the_compartment(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient
) -> None:
    # srBA (B's order) names A as requester; A may not learn it exists
    url = "/fhir/Patient?_has:ServiceRequest:requester:status=revoked"
    system, patient = await _both(client, patient_a, url)
    assert _ids(system) == {"Patient/A"}
    assert _ids(patient) == set()
    # A's own order is fair game
    url = "/fhir/Patient?_has:ServiceRequest:subject:status=completed"
    assert _ids((await patient_a.get(url)).json()) == {"Patient/A"}


async def test_includes_stay_in_the_compartment(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient
) -> None:
    url = "/fhir/Patient?_id=A&_revinclude=ServiceRequest:requester"
    system, patient = await _both(client, patient_a, url)
    assert _ids(system, "include") == {"ServiceRequest/srBA"}
    assert _ids(patient, "include") == set()
    url = (
        "/fhir/ServiceRequest?_id=srAB"
        "&_include=ServiceRequest:requester&_include=ServiceRequest:subject"
    )
    system, patient = await _both(client, patient_a, url)
    assert _ids(system, "include") == {"Patient/B", "Patient/A"}
    assert _ids(patient, "include") == {"Patient/A"}
    url = (
        "/fhir/ServiceRequest?_include=ServiceRequest:subject"
        "&_revinclude:iterate=ImagingStudy:subject"
    )
    system, patient = await _both(client, patient_a, url)
    assert {"Patient/B", "ImagingStudy/isB"} <= _ids(system, "include")
    assert _ids(patient, "include") == {"Patient/A", "ImagingStudy/isA"}


@pytest.mark.parametrize("total", ["accurate", "estimate"])
async def test_totals_count_only_what_the_token_sees(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient, total: str
) -> None:
    url = f"/fhir/ServiceRequest?_total={total}&_count=1"
    system, patient = await _both(client, patient_a, url)
    assert system["total"] == 4
    assert patient["total"] == 2
    system, patient = await _both(client, patient_a, "/fhir/ServiceRequest?_summary=count")
    assert (system["total"], patient["total"]) == (4, 2)
    assert "entry" not in patient or patient["entry"] == []


async def test_system_search_with_a_patient_token(
    client: httpx.AsyncClient, patient_a: httpx.AsyncClient
) -> None:
    url = "/fhir?_type=Patient,ServiceRequest,ImagingStudy&_total=accurate"
    system, patient = await _both(client, patient_a, url)
    assert len(_ids(system)) == system["total"] == 8
    assert _ids(patient) == {
        "Patient/A", "ServiceRequest/srA", "ServiceRequest/srAB", "ImagingStudy/isA"
    }  # fmt: skip
    assert patient["total"] == 4


async def test_chain_into_a_type_without_a_grant_is_forbidden(
    app: FastAPI, mint: Mint, world: None
) -> None:
    async for c in _as(app, mint("patient/ServiceRequest.rs", patient="A")):
        r = await c.get("/fhir/ServiceRequest?subject:Patient.name=alpha")
        assert r.status_code == 403
        r = await c.get("/fhir/ServiceRequest?status=active")
        assert _ids(r.json()) == {"ServiceRequest/srA"}
        # no grant on any target type: nothing is included
        r = await c.get("/fhir/ServiceRequest?_include=ServiceRequest:subject")
        assert _ids(r.json()) == {"ServiceRequest/srA", "ServiceRequest/srAB"}
        assert _ids(r.json(), "include") == set()


# -- errors, presentation, references ------------------------------------------------------


async def test_unknown_parameter_lenient_and_strict(client: httpx.AsyncClient, world: None) -> None:
    r = await client.get("/fhir/Patient?frobnicate=1&gender=male")
    assert r.status_code == 200
    bundle = r.json()
    assert _ids(bundle) == {"Patient/B"}
    (outcome,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert "frobnicate" in outcome["issue"][0]["diagnostics"]
    r = await client.get("/fhir/Patient?frobnicate=1&gender=male", headers=STRICT)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.get("/fhir/Patient?birthdate=yesterday")
    assert r.status_code == 400


async def test_contained_search_is_reported_as_unsupported(
    client: httpx.AsyncClient, world: None
) -> None:
    r = await client.get("/fhir/Patient?_contained=true&_id=A")
    assert r.status_code == 200
    modes = [e["search"]["mode"] for e in r.json()["entry"]]
    assert modes == ["match", "outcome"]
    assert (await client.get("/fhir/Patient?_contained=true", headers=STRICT)).status_code == 400
    r = await client.get("/fhir/Patient?_contained=false&_id=A", headers=STRICT)
    assert r.status_code == 200


async def test_summary_true_keeps_summary_elements_only(
    client: httpx.AsyncClient, world: None
) -> None:
    study = {
        "resourceType": "ImagingStudy", "id": "sum", "status": "available",
        "subject": {"reference": "Patient/A"}, "note": [{"text": "n"}],
        "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"},
        "procedureCode": [{"text": "CT head"}],
        "series": [{"uid": "1.2", "modality": {"code": "CT"},
                    "instance": [{"uid": "1.2.3", "sopClass": {"code": "1.2.840"}}]}],
    }  # fmt: skip
    assert (await client.put("/fhir/ImagingStudy/sum", json=study, headers=FHIR)).is_success
    r = await client.get("/fhir/ImagingStudy?_id=sum&_summary=true")
    (entry,) = r.json()["entry"]
    found = entry["resource"]
    assert "text" not in found and "procedureCode" in found and "note" in found
    assert found["series"] == [{"uid": "1.2", "modality": {"code": "CT"}}]  # instance: not summary
    assert {"code": "SUBSETTED"}.items() <= found["meta"]["tag"][-1].items()
    r = await client.get("/fhir/ImagingStudy?_id=sum&_summary=text")
    found = r.json()["entry"][0]["resource"]
    assert set(found) == {"resourceType", "id", "meta", "text", "status", "subject"}


async def test_own_absolute_urls_are_local_references(
    client: httpx.AsyncClient, world: None
) -> None:
    study = {
        "resourceType": "ImagingStudy", "id": "abs", "status": "registered",
        "subject": {"reference": f"{BASE}/fhir/Patient/A"},
    }  # fmt: skip
    other = dict(study, id="ext", subject={"reference": "http://elsewhere.org/fhir/Patient/A"})
    for resource in (study, other):
        url = f"/fhir/ImagingStudy/{resource['id']}"
        assert (await client.put(url, json=resource, headers=FHIR)).is_success
    for value in ("A", "Patient/A", f"{BASE}/fhir/Patient/A"):
        r = await client.get(f"/fhir/ImagingStudy?subject={value}&status=registered")
        assert _ids(r.json()) == {"ImagingStudy/abs"}, value
    r = await client.get("/fhir/ImagingStudy?_id=abs&_include=ImagingStudy:subject")
    assert _ids(r.json(), "include") == {"Patient/A"}
    r = await client.get("/fhir/ImagingStudy?subject=http://elsewhere.org/fhir/Patient/A")
    assert _ids(r.json()) == {"ImagingStudy/ext"}


async def test_contained_references(client: httpx.AsyncClient, world: None) -> None:
    report = {
        "resourceType": "DiagnosticReport", "id": "cont", "status": "registered",
        "code": {"text": "X"}, "subject": {"reference": "#p"},
        "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Inner"}]}],
    }  # fmt: skip
    assert (await client.put("/fhir/DiagnosticReport/cont", json=report, headers=FHIR)).is_success
    r = await client.get("/fhir/DiagnosticReport?subject=Patient/p")
    assert _ids(r.json()) == set()
    r = await client.get("/fhir/DiagnosticReport?subject:missing=false&status=registered")
    assert _ids(r.json()) == {"DiagnosticReport/cont"}
    r = await client.get("/fhir/Patient?name=inner")
    assert _ids(r.json()) == set()  # contained resources are not matches


# -- $everything ---------------------------------------------------------------------------


def _auth(scope: str, patient: str | None = None) -> AuthContext:
    return AuthContext("tester", None, ScopeSet.parse(scope), patient=patient)


async def test_everything_returns_the_compartment_and_references(app: FastAPI, world: None) -> None:
    svc = app.state.services
    bundle = await everything(svc, _auth("system/*.rs"), "A", [])
    assert _ids(bundle) == {
        "Patient/A", "ServiceRequest/srA", "ServiceRequest/srAB",
        "ImagingStudy/isA", "DiagnosticReport/drA",
    }  # fmt: skip
    # referenced from the compartment: the practitioner, and B (srAB's requester)
    assert _ids(bundle, "include") == {"Practitioner/doc", "Patient/B"}
    typed = await everything(svc, _auth("system/*.rs"), "A", [("_type", "ImagingStudy")])
    assert _ids(typed) == {"ImagingStudy/isA"}


async def test_everything_pages_and_since(
    app: FastAPI, client: httpx.AsyncClient, world: None
) -> None:
    svc = app.state.services
    auth = _auth("system/*.rs")
    seen: list[str] = []
    params: list[tuple[str, str]] = [("_count", "2")]
    for _ in range(5):
        bundle = await everything(svc, auth, "A", params)
        seen += sorted(_ids(bundle))
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        assert following[0].startswith(f"{BASE}/fhir/Patient/A/$everything?")
        cursor = following[0].split("_cursor=")[1]
        params = [("_count", "2"), ("_cursor", cursor)]
    assert len(seen) == len(set(seen)) == 5
    changed = await client.put("/fhir/DiagnosticReport/drA", json=WORLD[-1], headers=FHIR)
    since = changed.json()["meta"]["lastUpdated"]
    bundle = await everything(svc, auth, "A", [("_since", since)])
    assert _ids(bundle) == {"DiagnosticReport/drA"}


async def test_everything_for_another_patient_is_not_found(app: FastAPI, world: None) -> None:
    svc = app.state.services
    with pytest.raises(NotFound):
        await everything(svc, _auth("patient/*.rs", patient="B"), "A", [])
    with pytest.raises(NotFound):
        await everything(svc, _auth("system/*.rs"), "nobody", [])
    bundle = await everything(svc, _auth("patient/*.rs", patient="A"), "A", [])
    assert "Patient/B" not in _ids(bundle, "include")
    assert "Practitioner/doc" not in _ids(bundle, "include")  # no scope names Practitioner
    assert "ServiceRequest/srAB" in _ids(bundle)
