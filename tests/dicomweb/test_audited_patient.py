"""The AuditEvent of a DICOMweb request names the Patient whose study it reached
(IHE BALP), though the caller's token names no patient: every road into one
study, and none for a search across studies or a request that failed; a STOW-RS
names the Patient of the studies it stored into when the archive knew it; and
the FHIR writes of the archive's own ImagingStudy sync name theirs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dicomweb.study_sync import SYNC_AUDIT
from tests.conftest import BASE, MintToken
from tests.dicomweb.archive_app import eventually, imaging_study, patients_study, settled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

STUDY = "/dicomweb/studies/4.4"
SERIES = f"{STUDY}/series/4.4.1"
INSTANCE = f"{SERIES}/instances/4.4.1.1"
WADO_URI = "/dicomweb/wado?requestType=WADO&studyUID=4.4&seriesUID=4.4.1&objectUID=4.4.1.1"


async def _events(client: httpx.AsyncClient, told: str) -> list[dict[str, Any]]:
    found = await client.get("/fhir/AuditEvent", params={"_count": "1000"})
    events = [entry["resource"] for entry in found.json().get("entry", [])]
    return [event for event in events if event.get("outcomeDesc") == told]


async def _written(app: FastAPI) -> None:
    async def probe() -> bool | None:
        return True if not app.state.audit.unwritten() else None

    await eventually(probe, "the audit trail to write what it was given")


async def audited(
    client: httpx.AsyncClient, app: FastAPI, method: str, url: str, **send: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    """Send a request; its response and, once written, its AuditEvent (told from
    another to the same path, whose ``outcomeDesc`` is the same, by being new)."""
    told = f"DICOMweb {method} {httpx.URL(url).path}"
    await _written(app)  # (an earlier request's event is not taken for this one's)
    before = {event["id"] for event in await _events(client, told)}
    response = await client.request(method, url, **send)

    async def probe() -> dict[str, Any] | None:
        new = [event for event in await _events(client, told) if event["id"] not in before]
        assert len(new) <= 1, new
        return new[0] if new else None

    return response, await eventually(probe, f"the AuditEvent of {method} {url}")


def named_patients(event: dict[str, Any]) -> list[str]:
    """The references of the event's entities in the Patient role."""
    return [
        e["what"]["reference"]
        for e in event.get("entity", [])
        if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
    ]


ONE_STUDY = [
    STUDY,
    SERIES,
    INSTANCE,
    f"{STUDY}/metadata",
    f"{SERIES}/metadata",
    f"{INSTANCE}/metadata",
    f"{INSTANCE}/frames/1",
    f"{INSTANCE}/bulkdata/7FE00010",
    *(f"{base}/{kind}" for kind in ("rendered", "thumbnail") for base in (STUDY, SERIES, INSTANCE)),
    f"{INSTANCE}/frames/1/rendered",
    f"{INSTANCE}/frames/1/thumbnail",
    WADO_URI + "&contentType=application/dicom",
    WADO_URI + "&contentType=image/png",
    f"{STUDY}/series",  # QIDO-RS within the study
    f"{STUDY}/instances",
    f"{SERIES}/instances",
]


async def test_every_road_into_one_study_names_its_patient(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Retrievals, metadata, pixels, WADO-URI and QIDO-RS within the study, by GET and
    HEAD; DELETE's are in ``test_wado``."""
    patient = await patients_study(client, app, "4.4")
    named: dict[tuple[str, str], list[str]] = {}
    for url in ONE_STUDY:
        for method in ("GET", "HEAD"):
            response, event = await audited(client, app, method, url)
            assert response.status_code == 200, (method, url, response.text)
            named[method, url] = named_patients(event)
    assert named == {request: [patient] for request in named}


NONE = [
    ("/dicomweb/studies?PatientID=PAT-1", 200),  # across studies, though it finds this one
    ("/dicomweb/series?StudyInstanceUID=4.4", 200),
    ("/dicomweb/instances?StudyInstanceUID=4.4", 200),
    (f"{STUDY}/series?Modality=MR", 200),  # within the study, finding nothing of it
    (f"{SERIES}/instances?SOPInstanceUID=9.9", 200),
    (f"{STUDY}/series/9.9", 404),  # into the study, then failed
    (f"{STUDY}/series/9.9/metadata", 404),
    (f"{INSTANCE}/frames/2", 404),
    (f"{INSTANCE}/frames/2/rendered", 400),
    (WADO_URI.replace("4.4.1.1", "9.9") + "&contentType=image/png", 404),
    ("/dicomweb/studies/9.9", 404),  # no such study
]


async def test_a_search_across_studies_or_a_failed_request_names_no_patient(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Nothing of the one study was shown; the requests' token names no patient either."""
    await patients_study(client, app, "4.4")
    named: dict[str, list[str]] = {}
    for url, status in NONE:
        response, event = await audited(client, app, "GET", url)
        assert response.status_code == status, (url, response.text)
        named[url] = named_patients(event)
    assert named == {url: [] for url in named}


async def test_a_search_in_a_study_the_caller_cannot_see_names_not_its_patient(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken
) -> None:
    """Another patient's token finds nothing in the study: the AuditEvent names that
    token's patient, as every request of theirs, and not the study's."""
    await patients_study(client, app, "4.4")
    headers = {"Authorization": f"Bearer {mint('patient/*.rs', patient='someone-else')}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as other:
        response = await other.get(f"{STUDY}/series")
    assert response.status_code == 200
    assert response.json() == []

    async def probe() -> list[dict[str, Any]] | None:
        return await _events(client, f"DICOMweb GET {STUDY}/series") or None

    (event,) = await eventually(probe, "the search's AuditEvent")
    assert named_patients(event) == ["Patient/someone-else"]


PAT_1 = "Patient/pat-1"  # (study_patient's for PAT-1)
Studies = list[tuple[str, str]]  # (Study Instance UID, Patient ID)

STOWS: list[tuple[Studies, Studies, int, str | None]] = [
    # the studies stored and synced before, the instances of the STOW, its status, named
    ([("4.4", "PAT-1")], [("4.4", "PAT-1")], 200, PAT_1),
    (
        [("4.4", "PAT-1"), ("4.6", "PAT-1")],
        [("4.4", "PAT-1"), ("4.6", "PAT-1")],
        200,
        "Patient/pat-1",
    ),
    ([("4.4", "PAT-1")], [("4.4", "PAT-1"), ("4.4", "PAT-2")], 202, PAT_1),
    ([], [("4.7", "PAT-1")], 200, None),  # a new study: its Patient is not known yet
    ([("4.4", "PAT-1")], [("4.4", "PAT-1"), ("4.7", "PAT-1")], 200, None),  # one of them new
    ([("4.4", "PAT-1"), ("4.6", "PAT-2")], [("4.4", "PAT-1"), ("4.6", "PAT-2")], 200, None),
    ([("4.4", "PAT-1")], [("4.4", "PAT-2")], 409, None),  # refused: another patient's
]


@pytest.mark.parametrize(("known", "stored", "status", "named"), STOWS)
async def test_a_stow_names_the_known_patient_it_stored_for(
    client: httpx.AsyncClient,
    app: FastAPI,
    known: Studies,
    stored: Studies,
    status: int,
    named: str | None,
) -> None:
    for study, patient_id in known:
        await patients_study(client, app, study, patient_id)
    parts = [
        make_instance(study, f"{study}.1", f"{study}.1.{n}", patient_id=patient_id)
        for n, (study, patient_id) in enumerate(stored, start=2)
    ]
    response, event = await audited(
        client,
        app,
        "POST",
        "/dicomweb/studies",
        content=multipart(*parts),
        headers={"Content-Type": STOW_TYPE},
    )
    assert response.status_code == status, response.text
    assert named_patients(event) == ([named] if named else [])


async def test_a_stow_whose_patient_cannot_be_read_is_stored_all_the_same(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instances are stored when the audit looks for their Patient: a failure to
    find it costs the AuditEvent its Patient, not the client a 500 (and a resend)."""
    await patients_study(client, app, "4.4")
    index = app.state.dicomweb.index
    read = index.study
    failures = [OSError("the index is unreadable for a moment")]

    async def failing_once(uid: str) -> object:
        if failures:
            raise failures.pop()
        return await read(uid)

    monkeypatch.setattr(index, "study", failing_once)
    body = multipart(make_instance("4.4", "4.4.1", "4.4.1.2"))
    response, event = await audited(
        client, app, "POST", "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    assert not failures  # (the audit's read was the one that failed)
    assert named_patients(event) == []
    retrieved = await client.get("/dicomweb/studies/4.4/series/4.4.1/instances/4.4.1.2/metadata")
    assert retrieved.status_code == 200


def named_studies(event: dict[str, Any]) -> list[str]:
    """The references of the event's ImagingStudy entities."""
    refs = [e.get("what", {}).get("reference", "") for e in event.get("entity", [])]
    return [ref for ref in refs if ref.startswith("ImagingStudy/")]


STOW_STUDIES: list[tuple[str, Studies, int, list[str]]] = [
    # where it was sent, its instances, its status, the ImagingStudy its event names
    ("/dicomweb/studies", [("4.7", "PAT-1")], 200, ["ImagingStudy/4.7"]),
    ("/dicomweb/studies", [("4.7", "PAT-1"), ("4.7", "PAT-1")], 200, ["ImagingStudy/4.7"]),
    ("/dicomweb/studies", [("4.7", "PAT-1"), ("4.8", "PAT-1")], 200, []),  # two studies
    ("/dicomweb/studies", [("4.4", "PAT-1"), ("4.4", "PAT-2")], 202, ["ImagingStudy/4.4"]),
    ("/dicomweb/studies", [("4.4", "PAT-2")], 409, []),  # none stored
    ("/dicomweb/studies/4.7", [("4.7", "PAT-1")], 200, ["ImagingStudy/4.7"]),  # its path's
    ("/dicomweb/studies/4.9", [("4.7", "PAT-1")], 409, ["ImagingStudy/4.9"]),
]


@pytest.mark.parametrize(("url", "stored", "status", "named"), STOW_STUDIES)
async def test_a_stow_names_the_study_it_stored_into(
    client: httpx.AsyncClient,
    app: FastAPI,
    url: str,
    stored: Studies,
    status: int,
    named: list[str],
) -> None:
    """A STOW-RS whose path names no study is recorded as an access to the one study
    its instances went into (``AuditEvent?entity=`` finds it), when there was one."""
    await patients_study(client, app, "4.4")
    parts = [
        make_instance(study, f"{study}.1", f"{study}.1.{n}", patient_id=patient_id)
        for n, (study, patient_id) in enumerate(stored, start=2)
    ]
    response, event = await audited(
        client, app, "POST", url, content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == status, response.text
    assert named_studies(event) == named


async def test_the_syncs_fhir_writes_are_audited_under_their_patient(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A new study is filed: the archive creates its Patient from the DICOM
    demographics and writes its ImagingStudy; its DELETE removes the ImagingStudy.
    Each of those FHIR writes is an AuditEvent by the archive naming the Patient, so
    ``AuditEvent?patient=`` finds them beside the DICOMweb requests."""
    body = multipart(make_instance("4.8", "4.8.1", "4.8.1.1", patient_id="PAT-NEW"))
    stored = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    await settled(app)
    study = await imaging_study(client, "4.8")
    assert study is not None
    patient = study["subject"]["reference"]
    assert (await client.delete("/dicomweb/studies/4.8")).status_code == 204
    await _written(app)
    events = await _events(client, SYNC_AUDIT)
    done = sorted(
        (e["subtype"][0]["code"], e["entity"][0]["what"]["reference"], *named_patients(e))
        for e in events
    )
    assert done == [
        ("create", "Endpoint/radhub-dicomweb"),
        ("create", "ImagingStudy/4.8", patient),
        ("create", patient, patient),
        ("delete", "ImagingStudy/4.8", patient),
    ]
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in events} == {"radhub-dicom-archive"}
    found = await client.get("/fhir/AuditEvent", params={"patient": patient, "_count": "100"})
    told = {e["resource"].get("outcomeDesc") for e in found.json()["entry"]}
    assert SYNC_AUDIT in told
