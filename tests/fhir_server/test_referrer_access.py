"""A referring physician reads only their own patients' records (README, "Roles"):
through search, read, vread, history, includes, chains, ``_has``, totals,
``$everything`` and DICOMweb, all through the real ASGI stack.

The world: referrers r1 and r2 (Practitioners); r1 ordered for patient A, r2
for patient B, r2 is patient G's general practitioner, and r1's order for
patient N was entered in error. An existing resource outside a referrer's
reach answers 404, as for patient tokens (fhir_server/access/policy.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart
from tests.fhir_server.test_access import _as, _sr, _study
from tests.fhir_server.test_access import _report as _final_report

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://radhub.test"
DICOM_JSON = {"Accept": "application/dicom+json"}
Mint = Callable[..., str]


def _order(id: str, patient: str, requester: str, status: str = "active") -> dict[str, Any]:
    return _sr(id, patient, status=status, requester={"reference": f"Practitioner/{requester}"})


def _report(id: str, patient: str, status: str) -> dict[str, Any]:
    return {**_final_report(id, patient), "status": status}


def _patient(id: str, gp: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": id, "name": [{"family": id}]}
    if gp is not None:
        resource["generalPractitioner"] = [{"reference": f"Practitioner/{gp}"}]
    return resource


@pytest.fixture
async def world(client: httpx.AsyncClient) -> None:
    resources: list[dict[str, Any]] = [
        {"resourceType": "Practitioner", "id": "r1"},
        {"resourceType": "Practitioner", "id": "r2"},
        _patient("A"),
        _patient("B"),
        _patient("G", gp="r2"),
        _patient("N"),
        _order("srA", "A", "r1"),
        _order("srB", "B", "r2"),
        _order("srN", "N", "r1", status="entered-in-error"),
    ]
    for p in ("A", "B", "G", "N"):
        resources += [
            _study(f"is{p}", p),
            _report(f"dr{p}", p, "final"),
            _report(f"pre{p}", p, "preliminary"),
        ]
    for resource in resources:
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        r = await client.put(url, json=resource, headers=FHIR)
        assert r.status_code == 201, r.text


def _referrer(mint: Mint, practitioner: str) -> str:
    return mint("user/*.cruds", roles=["referrer"], fhir_user=f"Practitioner/{practitioner}")


@pytest.fixture
async def r1(app: FastAPI, mint: Mint, world: None) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _as(app, _referrer(mint, "r1")):
        yield c


@pytest.fixture
async def r2(app: FastAPI, mint: Mint, world: None) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _as(app, _referrer(mint, "r2")):
        yield c


async def _ids(c: httpx.AsyncClient, url: str, mode: str | None = "match") -> set[str]:
    r = await c.get(url)
    assert r.status_code == 200, r.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in r.json().get("entry", [])
        if mode is None or e["search"]["mode"] == mode
    }


async def test_search_finds_only_own_patients_records(
    r1: httpx.AsyncClient, r2: httpx.AsyncClient
) -> None:
    assert await _ids(r1, "/fhir/Patient") == {"Patient/A"}
    assert await _ids(r2, "/fhir/Patient") == {"Patient/B", "Patient/G"}
    assert await _ids(r1, "/fhir/ImagingStudy") == {"ImagingStudy/isA"}
    assert await _ids(r2, "/fhir/ImagingStudy") == {"ImagingStudy/isB", "ImagingStudy/isG"}
    # released reports of their own patients only
    assert await _ids(r1, "/fhir/DiagnosticReport") == {"DiagnosticReport/drA"}
    assert await _ids(r1, "/fhir/ServiceRequest") == {"ServiceRequest/srA"}
    # directory data stays open
    assert await _ids(r1, "/fhir/Practitioner") == {"Practitioner/r1", "Practitioner/r2"}


async def test_totals_count_only_what_is_visible(r1: httpx.AsyncClient) -> None:
    for url, total in (
        ("/fhir/Patient?_total=accurate", 1),
        ("/fhir/DiagnosticReport?_summary=count", 1),
        ("/fhir/ImagingStudy?_total=accurate&_count=0", 1),
    ):
        r = await r1.get(url)
        assert r.status_code == 200, r.text
        assert r.json()["total"] == total, url


async def test_read_vread_and_history_of_others_are_404(r1: httpx.AsyncClient) -> None:
    for url in ("/fhir/Patient/A", "/fhir/ImagingStudy/isA", "/fhir/DiagnosticReport/drA"):
        assert (await r1.get(url)).status_code == 200, url
        assert (await r1.get(f"{url}/_history/1")).status_code == 200, url
        history = await r1.get(f"{url}/_history")
        assert history.status_code == 200 and len(history.json()["entry"]) == 1, url
    for url in (
        "/fhir/Patient/B",
        "/fhir/Patient/G",
        "/fhir/Patient/N",  # only an order entered in error
        "/fhir/ImagingStudy/isB",
        "/fhir/DiagnosticReport/drB",
        "/fhir/DiagnosticReport/preA",  # their patient, but not released
        "/fhir/ServiceRequest/srB",
    ):
        assert (await r1.get(url)).status_code == 404, url
        assert (await r1.get(f"{url}/_history/1")).status_code == 404, url
        assert (await r1.get(f"{url}/_history")).status_code == 404, url
    # whole-type history cannot be filtered in the query: refused
    assert (await r1.get("/fhir/Patient/_history")).status_code == 403
    assert (await r1.get("/fhir/_history")).status_code == 403


async def test_history_hides_unreleased_versions(
    client: httpx.AsyncClient, r1: httpx.AsyncClient
) -> None:
    report = _report("drA", "A", "final")
    report["conclusion"] = "amended wording"
    assert (await client.put("/fhir/DiagnosticReport/drA", json=report, headers=FHIR)).is_success
    await client.put(
        "/fhir/DiagnosticReport/preA", json=_report("preA", "A", "final"), headers=FHIR
    )
    history = (await r1.get("/fhir/DiagnosticReport/preA/_history")).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2"]
    assert "total" not in history  # it would count the hidden version
    assert (await r1.get("/fhir/DiagnosticReport/preA/_history/1")).status_code == 404
    assert (await r1.get("/fhir/DiagnosticReport/preA/_history/2")).status_code == 200
    history = (await r1.get("/fhir/DiagnosticReport/drA/_history")).json()
    assert len(history["entry"]) == 2


async def test_includes_cannot_leak(r1: httpx.AsyncClient) -> None:
    found = await _ids(r1, "/fhir/Patient?_revinclude=DiagnosticReport:subject", None)
    assert found == {"Patient/A", "DiagnosticReport/drA"}
    found = await _ids(r1, "/fhir/DiagnosticReport?_include=DiagnosticReport:subject", None)
    assert found == {"DiagnosticReport/drA", "Patient/A"}
    # from open directory data to another referrer's orders
    url = "/fhir/Practitioner?_id=r2&_revinclude=ServiceRequest:requester"
    assert await _ids(r1, url, None) == {"Practitioner/r2"}
    url = "/fhir/Practitioner?_id=r1&_revinclude=ServiceRequest:requester"
    assert await _ids(r1, url, None) == {"Practitioner/r1", "ServiceRequest/srA"}


async def test_chains_and_has_cannot_probe(r1: httpx.AsyncClient) -> None:
    for url in (
        "/fhir/DiagnosticReport?subject:Patient.name=B",
        "/fhir/DiagnosticReport?subject=Patient/B",
        "/fhir/Patient?_has:ServiceRequest:subject:requester=Practitioner/r2",
        "/fhir/Patient?general-practitioner=Practitioner/r2",
        "/fhir/ImagingStudy?patient._has:ServiceRequest:subject:requester=Practitioner/r2",
    ):
        assert await _ids(r1, url) == set(), url
    assert await _ids(r1, "/fhir/DiagnosticReport?subject:Patient.name=A") == {
        "DiagnosticReport/drA"
    }
    url = "/fhir/Patient?_has:ServiceRequest:subject:requester=Practitioner/r1"
    assert await _ids(r1, url) == {"Patient/A"}


async def test_everything_holds_only_released_results(r1: httpx.AsyncClient) -> None:
    found = await _ids(r1, "/fhir/Patient/A/$everything", None)
    assert {"Patient/A", "ServiceRequest/srA", "ImagingStudy/isA", "DiagnosticReport/drA"} <= found
    assert "DiagnosticReport/preA" not in found
    assert not {f for f in found if f.startswith("Patient/") and f != "Patient/A"}
    assert (await r1.get("/fhir/Patient/B/$everything")).status_code == 404


async def test_a_new_order_makes_a_patient_theirs(r1: httpx.AsyncClient) -> None:
    assert (await r1.get("/fhir/Patient/B")).status_code == 404
    # an order in another physician's name is refused
    other = _order("x", "B", "r2")
    del other["id"]
    assert (await r1.post("/fhir/ServiceRequest", json=other, headers=FHIR)).status_code == 403
    own = _order("x", "B", "r1")
    del own["id"]
    created = await r1.post("/fhir/ServiceRequest", json=own, headers=FHIR)
    assert created.status_code == 201, created.text
    assert (await r1.get("/fhir/Patient/B")).status_code == 200
    assert await _ids(r1, "/fhir/DiagnosticReport?subject=Patient/B") == {"DiagnosticReport/drB"}
    # and may not reassign their order to another physician
    order = created.json()
    order["requester"] = {"reference": "Practitioner/r2"}
    url = f"/fhir/ServiceRequest/{order['id']}"
    assert (await r1.put(url, json=order, headers=FHIR)).status_code == 403


async def test_another_referrers_order_cannot_be_updated(r1: httpx.AsyncClient) -> None:
    order = _order("srB", "B", "r1")
    assert (await r1.put("/fhir/ServiceRequest/srB", json=order, headers=FHIR)).status_code == 404


async def test_a_referrer_without_a_practitioner_gets_nothing(
    app: FastAPI, mint: Mint, world: None
) -> None:
    token = mint("user/*.rs", roles=["referrer"], fhir_user="Patient/A")
    async for c in _as(app, token):
        assert (await c.get("/fhir/Patient")).status_code == 403
        assert (await c.get("/fhir/Patient/A")).status_code == 403


# -- DICOMweb ---------------------------------------------------------------------------


@pytest.fixture
async def archive(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    """Two DICOM studies of two patients; r1 ordered for the first one's patient.
    Returns study UID -> FHIR Patient id."""
    parts = [
        make_instance("1.2.1", "1.2.1.1", "1.2.1.1.1", patient_id="DA", accession="AX1"),
        make_instance("1.2.2", "1.2.2.1", "1.2.2.1.1", patient_id="DB", accession="AX2"),
    ]
    r = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert r.status_code == 200, r.text
    await asyncio.wait_for(app.state.archive_tasks.settled(), 30)  # the deferred FHIR sync
    patients: dict[str, str] = {}
    for uid in ("1.2.1", "1.2.2"):
        study = await client.get(f"/fhir/ImagingStudy/{uid}")
        assert study.status_code == 200, study.text
        patients[uid] = study.json()["subject"]["reference"].removeprefix("Patient/")
    order = _order("dicomA", patients["1.2.1"], "r1")
    assert (await client.put("/fhir/ServiceRequest/dicomA", json=order, headers=FHIR)).is_success
    return patients


async def _qido(c: httpx.AsyncClient, path: str = "/dicomweb/studies") -> list[str]:
    r = await c.get(path, headers=DICOM_JSON)
    assert r.status_code == 200, r.text
    return sorted(item["0020000D"]["Value"][0] for item in r.json())


async def test_dicomweb_reaches_only_own_patients_studies(
    app: FastAPI, mint: Mint, archive: dict[str, str]
) -> None:
    async for r1 in _as(app, _referrer(mint, "r1")):
        assert await _qido(r1) == ["1.2.1"]
        assert await _qido(r1, "/dicomweb/studies?PatientID=DB") == []
        assert await _qido(r1, "/dicomweb/series") == ["1.2.1"]
        assert await _qido(r1, "/dicomweb/instances") == ["1.2.1"]
        assert (await r1.get("/dicomweb/studies/1.2.1/metadata")).status_code == 200
        assert (await r1.get("/dicomweb/studies/1.2.2/metadata")).status_code == 404
        assert await _qido(r1, "/dicomweb/studies/1.2.2/series") == []
        assert (await r1.get("/dicomweb/studies/1.2.2")).status_code == 404
    async for r2 in _as(app, _referrer(mint, "r2")):
        assert await _qido(r2) == []
        assert (await r2.get("/dicomweb/studies/1.2.1/metadata")).status_code == 404
