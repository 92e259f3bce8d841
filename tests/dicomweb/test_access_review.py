"""An adversarial review of DICOMweb access control, through the real app.

Two patients' studies are stored (``4.4`` of Patient/pat-1, ``5.5`` of
Patient/pat-2), and pat-1's tokens, others' and none try every road to
pat-2's images: each WADO-RS level and resource (metadata, frames, bulk data,
pixel data, rendered, thumbnail), WADO-URI, a path that starts in the
caller's own study and ends in the other's series, QIDO-RS at each level with
and without a study, paged, with ``includefield=all``, as XML; studies whose
Patient is not known (sync pending, or two Patients with one identifier);
each scope form (v1 ``.read``, v2 ``.rs``, read without search and the
reverse, granular constraints, other types only); STOW-RS and DELETE with
every kind of grant; and requests without a valid token. What each answers
must be what the FHIR access rules say (``fhir_server.access.policy``), an
answer about another patient's study must not differ from one about a study
that does not exist (no probing), every request is audited, errors carry CORS
headers, and no token reaches the logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from dicomweb.study_sync import AmbiguousPatient
from tests.conftest import BASE, MintToken, app_token
from tests.dicomweb.archive_app import (
    DEFAULT_PATIENT_SYSTEM,
    eventually,
    fast_settings,
    patients_study,
    running,
    study_patient,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

ORIGIN = "http://viewer.test"
OWN, OTHER, NONE = (
    ("4.4", "4.4.1", "4.4.1.1"),
    ("5.5", "5.5.1", "5.5.1.1"),
    ("9.9", "9.9.1", "9.9.1.1"),
)
XML = 'multipart/related; type="application/dicom+xml"'


def study_roads(study: str) -> list[str]:
    """Every retrieval that names only the study."""
    base = f"/dicomweb/studies/{study}"
    return [
        base,
        *(f"{base}/{r}" for r in ("metadata", "bulkdata", "pixeldata", "rendered", "thumbnail")),
    ]


def deeper_roads(study: str, series: str, sop: str) -> list[str]:
    """Every retrieval of a series or an instance, WADO-URI's included."""
    se = f"/dicomweb/studies/{study}/series/{series}"
    inst = f"{se}/instances/{sop}"
    uri = f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    kinds = ("metadata", "bulkdata", "pixeldata", "rendered", "thumbnail")
    return [
        se,
        inst,
        *(f"{level}/{kind}" for level in (se, inst) for kind in kinds),
        f"{inst}/frames/1",
        f"{inst}/bulkdata/7FE00010",
        f"{inst}/frames/1/rendered",
        f"{inst}/frames/1/thumbnail",
        f"{uri}&contentType=application/dicom",
        f"{uri}&contentType=image/png",
    ]


def roads(study: str, series: str, sop: str) -> list[str]:
    return study_roads(study) + deeper_roads(study, series, sop)


@asynccontextmanager
async def caller(app: FastAPI, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending ``token`` (none: no Authorization) from a browser origin."""
    headers = {"Origin": ORIGIN}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


async def answer(c: httpx.AsyncClient, method: str, url: str) -> tuple[int, str]:
    response = await c.request(method, url)
    return response.status_code, response.text


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def studies_named(body: Any) -> set[str]:
    """The study UIDs (of ``OWN`` and ``OTHER``) a DICOM JSON answer shows anywhere."""
    found = set()
    for text in strings(body):
        for study in (OWN[0], OTHER[0]):
            if text == study or text.startswith(f"{study}.") or f"/studies/{study}" in text:
                found.add(study)
    return found


@pytest.fixture
async def two_patients(client: httpx.AsyncClient, app: FastAPI) -> None:
    """pat-1's study 4.4 and pat-2's 5.5, their ImagingStudies written."""
    await patients_study(client, app, OWN[0], "PAT-1")
    await patients_study(client, app, OTHER[0], "PAT-2")


# v2, v1 and a wildcard with every permission: the same reach
PATIENT_SCOPES = ["patient/ImagingStudy.rs", "patient/ImagingStudy.read", "patient/*.cruds"]


@pytest.mark.usefixtures("two_patients")
@pytest.mark.parametrize("scope", PATIENT_SCOPES)
async def test_a_patient_token_reaches_no_other_patients_study_by_any_road(
    app: FastAPI, mint: MintToken, scope: str
) -> None:
    """Each road to pat-2's images, and each from pat-1's study into pat-2's series,
    is answered exactly as the same road to a study that does not exist; the same
    token's roads to its own patient's study all lead there."""
    pairs = list(zip(roads(*OTHER), roads(*NONE), strict=True))
    # into the caller's own study, then out of it (the series is not the study's)
    pairs += zip(deeper_roads(OWN[0], *OTHER[1:]), deeper_roads(OWN[0], *NONE[1:]), strict=True)
    async with caller(app, mint(scope, patient="pat-1")) as c:
        for method in ("GET", "HEAD"):
            for other, absent in pairs:
                status, text = await answer(c, method, other)
                gone, why = await answer(c, method, absent)
                assert status == 404, (method, other, text[:200])
                assert (status, text) == (gone, why.replace("9.9", "5.5")), (method, other)
            for own in roads(*OWN):
                assert (await c.request(method, own)).status_code == 200, (method, own)


SEARCHES = [
    "/dicomweb/studies",
    "/dicomweb/series",
    "/dicomweb/instances",
    "/dicomweb/studies?includefield=all",
    "/dicomweb/instances?includefield=all",
    "/dicomweb/studies?offset=1",
    "/dicomweb/studies?limit=1&offset=0",
    "/dicomweb/studies?PatientID=PAT-2",
    "/dicomweb/studies?PatientID=*&PatientName=*",
    "/dicomweb/studies?StudyInstanceUID=4.4,5.5",
    "/dicomweb/series?StudyInstanceUID=5.5",
    "/dicomweb/instances?SOPInstanceUID=5.5.1.1",
    "/dicomweb/studies/5.5/series",
    "/dicomweb/studies/5.5/instances?includefield=all",
    "/dicomweb/studies/5.5/series/5.5.1/instances",
]


async def only_own_studies_found(c: httpx.AsyncClient, own: set[str]) -> None:
    """Every search of ``SEARCHES`` answers without pat-2's study, and each level's
    search across studies, with every field, finds exactly the studies ``own``."""
    for url in SEARCHES:
        response = await c.get(url)
        assert response.status_code == 200, (url, response.text)
        assert OTHER[0] not in studies_named(response.json()), url
    for level in ("studies", "series", "instances"):
        found = (await c.get(f"/dicomweb/{level}", params={"includefield": "all"})).json()
        assert studies_named(found) == own, level


@pytest.mark.usefixtures("two_patients")
@pytest.mark.parametrize("scope", ["patient/ImagingStudy.rs", "patient/*.read"])
async def test_a_patient_tokens_searches_find_only_its_patients_studies(
    app: FastAPI, mint: MintToken, scope: str
) -> None:
    """QIDO-RS at every level, with a study or across studies, paged and with every
    field, shows nothing of pat-2's study; searches across studies do find pat-1's."""
    async with caller(app, mint(scope, patient="pat-1")) as c:
        await only_own_studies_found(c, {OWN[0]})
        xml = await c.get("/dicomweb/instances", params={"includefield": "all", "accept": XML})
        assert xml.status_code == 200 and OWN[1] in xml.text and OTHER[1] not in xml.text


@pytest.mark.usefixtures("two_patients")
async def test_every_study_is_searchable_by_an_unrestricted_token(
    client: httpx.AsyncClient,
) -> None:
    """(The searches above could find pat-2's study: a system token does.)"""
    for level in ("studies", "series", "instances"):
        found = (await client.get(f"/dicomweb/{level}")).json()
        assert studies_named(found) == {OWN[0], OTHER[0]}, level


async def test_a_study_whose_patient_is_not_yet_known_is_no_patients(tmp_path: Path) -> None:
    """Stored for PAT-1 but not yet synced, the study has no Patient on the index: no
    patient token reaches it, not even the one its Patient ID will resolve to;
    once synced, that one does."""
    settings = fast_settings(tmp_path / "data", study_sync_delay=3600.0)  # (pending all along)
    async with running(settings) as (app, client):
        await study_patient(client, "PAT-1")
        body = multipart(make_instance("6.6", "6.6.1", "6.6.1.1", patient_id="PAT-1"))
        stored = await client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200
        async with caller(app, app_token(app, "patient/*.rs", patient="pat-1")) as c:
            assert (await c.get("/dicomweb/studies/6.6/metadata")).status_code == 404
            assert (await c.get("/dicomweb/studies")).json() == []
            await app.state.dicomweb.sync.sync(["6.6"])
            assert (await c.get("/dicomweb/studies/6.6/metadata")).status_code == 200
            found = (await c.get("/dicomweb/studies")).json()
            assert [s["0020000D"]["Value"] for s in found] == [["6.6"]]


async def test_a_study_whose_patient_id_two_patients_share_is_no_patients(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken
) -> None:
    """Two Patients carry the study's Patient ID: its sync refuses to choose, and
    neither Patient's token reaches it (the archive's own token does)."""
    await study_patient(client, "PAT-1")
    twin = {
        "resourceType": "Patient",
        "id": "twin",
        "identifier": [{"system": DEFAULT_PATIENT_SYSTEM, "value": "PAT-1"}],
    }
    assert (await client.put("/fhir/Patient/twin", json=twin)).status_code == 201
    body = multipart(make_instance("8.8", "8.8.1", "8.8.1.1", patient_id="PAT-1"))
    stored = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    with pytest.raises(AmbiguousPatient):
        await app.state.dicomweb.sync.sync(["8.8"])
    for patient in ("pat-1", "twin"):
        async with caller(app, mint("patient/*.rs", patient=patient)) as c:
            assert (await c.get("/dicomweb/studies/8.8/metadata")).status_code == 404
            assert (await c.get("/dicomweb/studies")).json() == []
    assert (await client.get("/dicomweb/studies/8.8/metadata")).status_code == 200


# scope -> (QIDO-RS, metadata, rendered) on the token's own patient's study
SCOPE_TABLE = {
    "patient/ImagingStudy.rs": (200, 200, 200),
    "patient/ImagingStudy.r": (403, 200, 200),  # read without search
    "patient/ImagingStudy.s": (200, 403, 403),  # search without read: no pixels
    "patient/ImagingStudy.read": (200, 200, 200),  # v1
    "patient/Patient.read": (403, 403, 403),  # the Patient alone is not their images
    "patient/Observation.rs": (403, 403, 403),
    "patient/ImagingStudy.rs?status=available": (403, 403, 403),  # cannot apply: refused
    "user/ImagingStudy.rs?status=available": (403, 403, 403),
    "openid fhirUser launch/patient": (403, 403, 403),
}


@pytest.mark.usefixtures("two_patients")
async def test_what_each_scope_lets_a_patient_token_do(app: FastAPI, mint: MintToken) -> None:
    """Read rights for retrievals and pixels, search rights for QIDO-RS, as the FHIR
    rules say of ImagingStudy; a refusal is the token's whichever study is asked
    for, so another patient's study is a 404 only where the caller's own is a 200."""
    inst = "/dicomweb/studies/4.4/series/4.4.1/instances/4.4.1.1"
    got: dict[str, tuple[int, int, int]] = {}
    others: dict[str, int] = {}
    wanted: dict[str, int] = {}
    for scope, (_, metadata, _) in SCOPE_TABLE.items():
        async with caller(app, mint(scope, patient="pat-1")) as c:
            got[scope] = (
                (await c.get("/dicomweb/studies")).status_code,
                (await c.get("/dicomweb/studies/4.4/metadata")).status_code,
                (await c.get(f"{inst}/rendered")).status_code,
            )
            others[scope] = (await c.get("/dicomweb/studies/5.5/metadata")).status_code
        wanted[scope] = 404 if metadata == 200 else metadata
    assert got == SCOPE_TABLE
    assert others == wanted


@pytest.fixture
async def one_study(client: httpx.AsyncClient) -> None:
    """pat-2's study 5.5 (whether its ImagingStudy is written yet does not matter to
    an unrestricted caller, the only one that may delete)."""
    body = multipart(make_instance(*OTHER, patient_id="PAT-2"))
    stored = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200


DELETES = [
    ("system/ImagingStudy.d", 204),
    ("system/ImagingStudy.write", 204),  # v1: c, u and d
    ("system/*.cruds", 204),
    ("system/ImagingStudy.rs", 403),
    ("system/Patient.d", 403),
    ("system/ImagingStudy.d?status=available", 403),  # restricted: not all of the study
    ("user/ImagingStudy.cruds", 403),
    ("patient/ImagingStudy.cruds", 403),
]


@pytest.mark.usefixtures("one_study")
@pytest.mark.parametrize(("scope", "status"), DELETES)
async def test_delete_needs_an_unrestricted_system_delete_scope(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken, scope: str, status: int
) -> None:
    inst = "/dicomweb/studies/5.5/series/5.5.1/instances/5.5.1.1"
    async with caller(app, mint(scope, patient="pat-2")) as c:
        response = await c.delete(inst)
    assert response.status_code == status, response.text
    assert (await client.get(f"{inst}/metadata")).status_code == (404 if status == 204 else 200)


STOWS = [
    ("user/ImagingStudy.cu", 200),
    ("user/ImagingStudy.write", 200),  # v1
    ("system/*.cruds", 200),
    ("system/ImagingStudy.c", 403),  # joining a stored study is an update too
    ("user/ImagingStudy.rs", 403),
    ("patient/ImagingStudy.cu", 403),  # even into the patient's own study
    ("patient/*.cruds", 403),
    ("user/ImagingStudy.cu?status=available", 403),
]


@pytest.mark.parametrize(("scope", "status"), STOWS)
async def test_stow_needs_unrestricted_imaging_study_write_rights(
    app: FastAPI, mint: MintToken, scope: str, status: int
) -> None:
    body = multipart(make_instance("4.4", "4.4.1", "4.4.1.9", patient_id="PAT-1", number=9))
    async with caller(app, mint(scope, patient="pat-1")) as c:
        response = await c.post(
            "/dicomweb/studies/4.4", content=body, headers={"Content-Type": STOW_TYPE}
        )
    assert response.status_code == status, response.text
    stored = await app.state.dicomweb.index.instances("4.4", "4.4.1", "4.4.1.9")
    assert len(stored) == (1 if status == 200 else 0)


def forged(token: str) -> str:
    """``token`` with another signature."""
    head, claims, signature = token.split(".")
    return f"{head}.{claims}.{signature[::-1]}"


@pytest.mark.usefixtures("two_patients")
async def test_without_a_valid_token_nothing_answers_but_401_and_each_is_audited(
    app: FastAPI, client: httpx.AsyncClient, mint: MintToken
) -> None:
    """No token, an expired one, a forged one, another scheme: every road, search,
    STOW-RS and DELETE is a 401 with its challenge and CORS headers, changes
    nothing, and leaves an AuditEvent of an anonymous failure."""
    tokens: list[str | None] = [None, mint(ttl=-3600), forged(mint())]
    requests = [("GET", url) for url in roads(*OWN) + ["/dicomweb/studies", "/dicomweb/instances"]]
    requests += [("HEAD", url) for url in roads(*OTHER)]
    requests += [("DELETE", "/dicomweb/studies/4.4"), ("POST", "/dicomweb/studies")]
    body = multipart(make_instance("7.7", "7.7.1", "7.7.1.1"))
    for token in tokens:
        async with caller(app, token) as c:
            for method, url in requests:
                send = (
                    {"content": body, "headers": {"Content-Type": STOW_TYPE}}
                    if method == "POST"
                    else {}
                )
                response = await c.request(method, url, **send)
                assert response.status_code == 401, (token, method, url)
                assert response.headers["www-authenticate"].startswith("Bearer"), url
                assert response.headers["access-control-allow-origin"] in ("*", ORIGIN), url
    basic = {"Authorization": "Basic dXNlcjpwYXNz", "Origin": ORIGIN}
    assert (await client.get("/dicomweb/studies/4.4", headers=basic)).status_code == 401
    assert await app.state.dicomweb.index.study("4.4") is not None
    assert await app.state.dicomweb.index.study("7.7") is None

    told = {f"DICOMweb {method} {httpx.URL(url).path}" for method, url in requests}

    async def audited() -> set[str] | None:
        found = await client.get("/fhir/AuditEvent", params={"_count": "1000"})
        events = [e["resource"] for e in found.json().get("entry", [])]
        seen = {
            e.get("outcomeDesc")
            for e in events
            if e["outcome"] == "4" and e["agent"][0]["who"].get("display") == "anonymous"
        }
        return seen if told <= seen else None

    await eventually(audited, "an AuditEvent of every refused request")


@pytest.mark.usefixtures("two_patients")
async def test_no_token_reaches_the_logs_and_a_500_keeps_its_cors_headers(
    app: FastAPI,
    mint: MintToken,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Allowed, refused, not found, expired, forged, and a fault of the server's:
    no token in any log record, at any level."""
    caplog.set_level(logging.DEBUG)
    system, patient, expired = mint(), mint("patient/*.rs", patient="pat-1"), mint(ttl=-3600)
    tokens = [system, patient, expired, forged(system)]
    for token in tokens:
        async with caller(app, token) as c:
            for url in ("/dicomweb/studies/4.4/metadata", "/dicomweb/studies/5.5/rendered"):
                await c.get(url)
            await c.delete("/dicomweb/studies/9.9")

    async def broken(study: str) -> None:
        raise RuntimeError("the index is gone")

    monkeypatch.setattr(app.state.dicomweb.index, "study", broken)
    async with caller(app, system) as c:
        failed = await c.get("/dicomweb/studies/4.4/metadata")
    assert failed.status_code == 500
    assert failed.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert orjson.loads(failed.content) == {"status": 500, "message": "internal error"}
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "unexpected error in GET /dicomweb/studies/4.4/metadata" in logged
    for token in tokens:
        assert token not in logged
        assert token.split(".")[2] not in logged  # nor its signature alone
