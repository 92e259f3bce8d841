"""QIDO-RS through the real ASGI stack, checked against the pure matching oracle."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from dicomweb.qido import parse_qido
from dicomweb.qido_match import matches
from tests.dicomweb.archive_app import settled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

STUDIES = {
    "1.1": dict(patient_id="P1", name="Doe^Jane", date="20240105", modality="CT", accession="A1"),
    "2.2": dict(patient_id="P2", name="Doe^John", date="20240220", modality="MR", accession="A2"),
    "3.3": dict(patient_id="P3", name="Roe^Ann", date="20231231", modality="CT", accession="A3"),
}


@pytest.fixture
async def loaded(client: httpx.AsyncClient) -> httpx.AsyncClient:
    parts = []
    for study, attrs in STUDIES.items():
        for n in (1, 2):
            parts.append(make_instance(study, f"{study}.1", f"{study}.1.{n}", number=n, **attrs))  # type: ignore[arg-type]
    parts.append(
        make_instance(
            "1.1",
            "1.1.2",
            "1.1.2.1",
            modality="SR",
            **{k: v for k, v in STUDIES["1.1"].items() if k != "modality"},
        )
    )  # type: ignore[arg-type]
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200
    return client


def uids(found: list[dict[str, object]], tag: str = "0020000D") -> list[str]:
    return sorted(r[tag]["Value"][0] for r in found)  # type: ignore[index]


@pytest.mark.parametrize(
    "params",
    [
        {"PatientName": "doe*"},
        {"PatientName": "DOE^JANE"},
        {"PatientName": "d?e^j*"},
        {"StudyDate": "20240101-"},
        {"StudyDate": "-20240105"},
        {"StudyDate": "20240105"},
        {"ModalitiesInStudy": "SR"},
        {"ModalitiesInStudy": "MR,SR"},
        {"PatientID": "P3"},
        {"AccessionNumber": "A*"},
        {"StudyInstanceUID": "1.1,3.3"},
        {"PatientName": "nobody"},
    ],
)
async def test_study_search_matches_the_oracle(
    loaded: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await loaded.get(
        "/dicomweb/studies", params=params, headers={"Accept": "application/dicom+json"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    found = response.json()
    query = parse_qido("study", list(params.items()))
    records = {uid: await _study_record(loaded, uid) for uid in STUDIES}
    expected = sorted(uid for uid, record in records.items() if matches(query, record))
    assert expected or params == {"PatientName": "nobody"}
    assert uids(found) == expected


async def _study_record(client: httpx.AsyncClient, uid: str) -> dict[str, object]:
    response = await client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": uid, "includefield": "all"}
    )
    (record,) = response.json()
    return record  # type: ignore[no-any-return]


async def test_required_attributes_and_aggregates(loaded: httpx.AsyncClient) -> None:
    (study,) = (await loaded.get("/dicomweb/studies", params={"PatientID": "P1"})).json()
    assert study["00080061"]["Value"] == ["CT", "SR"]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [3]
    assert study["00081190"]["Value"][0].endswith("/dicomweb/studies/1.1")
    assert "00081030" not in study  # StudyDescription only when asked for
    (asked,) = (
        await loaded.get(
            "/dicomweb/studies", params={"PatientID": "P1", "includefield": "00081030"}
        )
    ).json()
    assert asked["00081030"]["Value"] == ["CHEST"]
    series = (await loaded.get("/dicomweb/studies/1.1/series")).json()
    assert uids(series, "0020000E") == ["1.1.1", "1.1.2"]
    assert {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in series} == {
        "1.1.1": 2,
        "1.1.2": 1,
    }


async def test_all_six_resources(loaded: httpx.AsyncClient) -> None:
    assert len((await loaded.get("/dicomweb/studies")).json()) == 3
    assert len((await loaded.get("/dicomweb/series", params={"Modality": "CT"})).json()) == 2
    all_series = (await loaded.get("/dicomweb/series", params={"PatientName": "doe^jane"})).json()
    assert uids(all_series, "0020000E") == ["1.1.1", "1.1.2"]
    assert all_series[0]["00100020"]["Value"] == ["P1"]  # study attributes at /series
    inst = (await loaded.get("/dicomweb/studies/2.2/series/2.2.1/instances")).json()
    assert uids(inst, "00080018") == ["2.2.1.1", "2.2.1.2"]
    assert uids((await loaded.get("/dicomweb/studies/1.1/instances")).json(), "00080018") == [
        "1.1.1.1",
        "1.1.1.2",
        "1.1.2.1",
    ]
    found = (await loaded.get("/dicomweb/instances", params={"InstanceNumber": "2"})).json()
    assert uids(found, "00080018") == ["1.1.1.2", "2.2.1.2", "3.3.1.2"]
    assert (await loaded.get("/dicomweb/studies/9.9/series")).json() == []


async def test_paging_warnings_and_errors(loaded: httpx.AsyncClient) -> None:
    first = await loaded.get("/dicomweb/studies", params={"limit": "2"})
    second = await loaded.get("/dicomweb/studies", params={"limit": "2", "offset": "2"})
    assert len(first.json()) == 2 and len(second.json()) == 1
    assert set(uids(first.json()) + uids(second.json())) == set(STUDIES)
    ignored = await loaded.get(
        "/dicomweb/studies", params={"Unknown": "x", "fuzzymatching": "true"}
    )
    warnings = ignored.headers.get_list("warning")
    assert len(warnings) == 2 and all(w.startswith("299 ") for w in warnings)
    assert (await loaded.get("/dicomweb/studies", params={"StudyDate": "2024"})).status_code == 400
    assert (
        await loaded.get("/dicomweb/studies", headers={"Accept": "application/xml"})
    ).status_code == 406


async def test_result_cap_is_answered_with_a_warning(
    app: FastAPI, loaded: httpx.AsyncClient
) -> None:
    from dataclasses import replace

    from dicomweb.routes import dicomweb_router

    capped = replace(app.state.dicomweb, max_results=2)
    sub = FastAPI()
    sub.include_router(dicomweb_router(capped), prefix="/dicomweb")
    transport = httpx.ASGITransport(app=sub)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://radhub.test", headers=loaded.headers
    ) as c:
        response = await c.get("/dicomweb/studies")
    assert response.status_code == 200 and len(response.json()) == 2
    assert "exceeded the maximum" in response.headers["warning"]


async def test_patient_token_sees_only_its_studies(
    app: FastAPI, loaded: httpx.AsyncClient, mint: object
) -> None:
    await settled(app)  # the Patient is recorded on the study by the deferred sync
    index = app.state.dicomweb.index
    study = await index.study("2.2")
    assert study is not None and study.patient_ref
    token = mint("patient/*.rs", patient=study.patient_ref)  # type: ignore[operator]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://radhub.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as c:
        assert uids((await c.get("/dicomweb/studies")).json()) == ["2.2"]
        assert (await c.get("/dicomweb/studies/1.1/series")).json() == []
        assert (await c.get("/dicomweb/studies/1.1/metadata")).status_code == 404
        assert (await c.get("/dicomweb/studies/2.2/metadata")).status_code == 200
