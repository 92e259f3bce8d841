"""WADO-RS, WADO-URI, rendered images and DELETE through the real ASGI stack."""

from __future__ import annotations

import io

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from pydicom import dcmread

from dicomweb.retrievals_in_flight import HeldBody
from tests.dicomweb.archive_app import eventually, patients_study
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, split_multipart

INST = "/dicomweb/studies/1.2.3/series/1.2.3.1/instances"
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
async def loaded(client: httpx.AsyncClient) -> httpx.AsyncClient:
    parts = [
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", number=1, frames=3),
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", number=2, implicit=True),
        bundled("JPEG2000.dcm").read_bytes(),
    ]
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return client


def jpeg2000_path() -> str:
    ds = dcmread(bundled("JPEG2000.dcm"), stop_before_pixels=True)
    series = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


async def test_series_retrieval_default_is_explicit_le(loaded: httpx.AsyncClient) -> None:
    response = await loaded.get("/dicomweb/studies/1.2.3/series/1.2.3.1")
    assert response.status_code == 200
    assert "transfer-syntax=1.2.840.10008.1.2.1" in response.headers["content-type"]
    parts = split_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 2
    datasets = [dcmread(io.BytesIO(p)) for p in parts]
    assert [str(d.file_meta.TransferSyntaxUID) for d in datasets] == ["1.2.840.10008.1.2.1"] * 2
    assert [d.SOPInstanceUID for d in datasets] == ["1.2.3.1.1", "1.2.3.1.2"]


async def test_study_as_stored_has_a_content_length(loaded: httpx.AsyncClient) -> None:
    original = bundled("JPEG2000.dcm").read_bytes()
    study = jpeg2000_path().split("/series/")[0]
    response = await loaded.get(study, headers={"Accept": ANY_TS})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))
    (part,) = split_multipart(response.content, response.headers["content-type"])
    assert part == original
    assert "content-location: " in response.text[:400].lower()


async def test_study_with_a_transcoded_part_is_streamed_without_a_length(
    loaded: httpx.AsyncClient,
) -> None:
    response = await loaded.get("/dicomweb/studies/1.2.3", headers={"Accept": ANY_TS})
    assert response.status_code == 200
    assert "content-length" not in response.headers  # a transcoding's size is not known ahead
    parts = split_multipart(response.content, response.headers["content-type"])
    datasets = [dcmread(io.BytesIO(p)) for p in parts]
    assert [d.SOPInstanceUID for d in datasets] == ["1.2.3.1.1", "1.2.3.1.2"]
    assert [str(d.file_meta.TransferSyntaxUID) for d in datasets] == ["1.2.840.10008.1.2.1"] * 2


async def test_implicit_vr_is_never_sent(loaded: httpx.AsyncClient) -> None:
    response = await loaded.get(f"{INST}/1.2.3.1.2", headers={"Accept": ANY_TS})
    (part,) = split_multipart(response.content, response.headers["content-type"])
    assert str(dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
    implicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    assert (await loaded.get(f"{INST}/1.2.3.1.2", headers={"Accept": implicit})).status_code == 406


async def test_compressed_instance_as_stored_or_transcoded(loaded: httpx.AsyncClient) -> None:
    original = bundled("JPEG2000.dcm").read_bytes()
    as_stored = await loaded.get(jpeg2000_path(), headers={"Accept": ANY_TS})
    assert split_multipart(as_stored.content, as_stored.headers["content-type"]) == [original]
    transcoded = await loaded.get(jpeg2000_path())
    (part,) = split_multipart(transcoded.content, transcoded.headers["content-type"])
    ds = dcmread(io.BytesIO(part))
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
    assert ds.pixel_array.shape == (int(ds.Rows), int(ds.Columns))
    assert (await loaded.get(jpeg2000_path(), headers={"Accept": "text/html"})).status_code == 406


async def test_metadata_at_every_level_gzip_and_etag(loaded: httpx.AsyncClient) -> None:
    series = await loaded.get("/dicomweb/studies/1.2.3/series/1.2.3.1/metadata")
    assert series.status_code == 200 and len(series.json()) == 2
    pixel = series.json()[0]["7FE00010"]
    assert pixel["BulkDataURI"].endswith("/instances/1.2.3.1.1/bulkdata/7FE00010")
    assert len((await loaded.get("/dicomweb/studies/1.2.3/metadata")).json()) == 2
    assert len((await loaded.get(f"{INST}/1.2.3.1.1/metadata")).json()) == 1
    etag = series.headers["etag"]
    again = await loaded.get(
        "/dicomweb/studies/1.2.3/series/1.2.3.1/metadata", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    raw = await loaded.get(
        "/dicomweb/studies/1.2.3/series/1.2.3.1/metadata",
        headers={"Accept-Encoding": "gzip"},
        extensions={"decode_content": False},
    )
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json() == series.json()


async def test_frames_and_bulkdata(loaded: httpx.AsyncClient) -> None:
    response = await loaded.get(f"{INST}/1.2.3.1.1/frames/1,3")
    assert response.status_code == 200
    frames = split_multipart(response.content, response.headers["content-type"])
    source = dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", number=1, frames=3)))
    assert frames == [source.pixel_array[0].tobytes(), source.pixel_array[2].tobytes()]
    assert (await loaded.get(f"{INST}/1.2.3.1.1/frames/4")).status_code == 404
    compressed = await loaded.get(f"{jpeg2000_path()}/frames/1")
    (frame,) = split_multipart(compressed.content, compressed.headers["content-type"])
    ds = dcmread(bundled("JPEG2000.dcm"))
    assert frame == ds.pixel_array.tobytes()
    bulk = await loaded.get(f"{INST}/1.2.3.1.2/bulkdata/7FE00010")
    assert split_multipart(bulk.content, bulk.headers["content-type"]) == [
        dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", number=2))).PixelData
    ]


# A frame list (PS3.18 §10.4.1.1.3) and the status it gets.
FRAME_LISTS: list[tuple[str, int]] = [
    ("3,1", 200),
    ("1,,3", 200),
    ("1, 3", 200),
    ("１", 400),  # fullwidth one: int() takes it
    ("²", 400),  # str.isdigit() takes it, int() does not
    ("1_0", 400),  # int() takes it as 10
    ("+1", 400),
    ("0", 400),
    ("1,x", 400),
    ("1,1", 400),  # non-duplicate frame numbers only
    ("3,1,03", 400),
    (",".join(["1"] * 32_000), 400),  # built a body 32,000 frames long
    ("4", 404),
    (str(2**63), 404),
    ("9" * 5000, 404),  # more digits than int() reads by default
]


async def test_frame_list_is_ascii_frame_numbers_without_repeats(
    loaded: httpx.AsyncClient,
) -> None:
    source = dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", frames=3)))
    wrong = []
    for frames, status in FRAME_LISTS:
        response = await loaded.get(f"{INST}/1.2.3.1.1/frames/{frames}")
        if response.status_code != status:
            wrong.append((frames[:20], status, response.status_code))
        elif status == 200:
            numbers = [int(n) for n in frames.split(",") if n.strip()]
            parts = split_multipart(response.content, response.headers["content-type"])
            assert parts == [source.pixel_array[n - 1].tobytes() for n in numbers], frames
    assert wrong == []


async def test_rendered_and_thumbnail(loaded: httpx.AsyncClient) -> None:
    jpeg = await loaded.get(f"{INST}/1.2.3.1.1/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (8, 8)
    png = await loaded.get(
        f"{INST}/1.2.3.1.1/frames/2/rendered",
        params={"window": "100,50", "viewport": "4,4"},
        headers={"Accept": "image/png"},
    )
    image = Image.open(io.BytesIO(png.content))
    assert png.headers["content-type"] == "image/png" and image.size == (4, 4)
    thumb = await loaded.get(f"{jpeg2000_path()}/thumbnail")
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    assert (
        await loaded.get(f"{INST}/1.2.3.1.1/rendered", headers={"Accept": "image/webp"})
    ).status_code == 406


async def test_wado_uri(loaded: httpx.AsyncClient) -> None:
    params = {
        "requestType": "WADO",
        "studyUID": "1.2.3",
        "seriesUID": "1.2.3.1",
        "objectUID": "1.2.3.1.1",
    }
    image = await loaded.get("/dicomweb/wado", params=params)
    assert image.headers["content-type"] == "image/jpeg"
    dicom = await loaded.get(
        "/dicomweb/wado", params={**params, "contentType": "application/dicom"}
    )
    assert dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == "1.2.3.1.1"
    assert (
        await loaded.get("/dicomweb/wado", params={**params, "requestType": "X"})
    ).status_code == 400


async def test_unknown_uids_and_cors_on_errors(loaded: httpx.AsyncClient) -> None:
    origin = {"Origin": "https://viewer.example"}
    for path in (
        "/dicomweb/studies/9.9",
        f"{INST}/9.9",
        "/dicomweb/studies/1.2.3/series/9/metadata",
    ):
        response = await loaded.get(path, headers=origin)
        assert response.status_code == 404, path
        assert response.headers.get("access-control-allow-origin")


async def test_delete_needs_system_scope_and_updates_everything(
    app: FastAPI, loaded: httpx.AsyncClient, mint: object
) -> None:
    transport = httpx.ASGITransport(app=app)
    user = mint("user/*.cruds")  # type: ignore[operator]
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://radhub.test",
        headers={"Authorization": f"Bearer {user}"},
    ) as c:
        assert (await c.delete(f"{INST}/1.2.3.1.1")).status_code == 403
    assert (await loaded.delete(f"{INST}/1.2.3.1.1")).status_code == 204
    assert (await loaded.get(f"{INST}/1.2.3.1.1")).status_code == 404
    study = (await loaded.get("/fhir/ImagingStudy/1.2.3")).json()
    assert study["numberOfInstances"] == 1
    assert (await loaded.delete("/dicomweb/studies/1.2.3")).status_code == 204
    assert (await loaded.get("/fhir/ImagingStudy/1.2.3")).status_code == 410
    assert await app.state.dicomweb.index.study("1.2.3") is None
    blobs = app.state.dicomweb.blobs
    keys = await blobs.keys()
    assert len(keys) == 1  # only the JPEG 2000 study's blob is left
    # and no emptied directory: below the fan-out, only that study's
    studies = [d for d in blobs.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*") if d.is_dir()]
    assert studies == [blobs.path_for(keys[0]).parent.parent]


async def test_a_head_request_holds_nothing(
    loaded: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without the last resort for a body dropped unsent: HEAD closes its body itself
    monkeypatch.setattr(HeldBody, "__del__", lambda self: None)
    response = await loaded.head("/dicomweb/studies/1.2.3")
    assert response.status_code == 200 and response.content == b""
    assert app.state.dicomweb.retrievals.busy() == 0


FROM_FILES = [
    "/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1/frames/1",
    "/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1/rendered",
    "/dicomweb/studies/1.2.3/series/1.2.3.1/thumbnail",
    "/dicomweb/wado?requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.1"
    "&objectUID=1.2.3.1.1&contentType=image/png",
]
JPEG2000_FROM_FILES = ["", "/frames/1", "/bulkdata/7FE00010"]  # transcoded, decoded


@pytest.mark.parametrize("path", FROM_FILES + [f"jpeg2000{p}" for p in JPEG2000_FROM_FILES])
async def test_a_file_gone_before_the_response_starts_is_a_404(
    loaded: httpx.AsyncClient,
    app: FastAPI,
    path: str,
) -> None:
    """Frames, rendered images, bulk data and transcodings are made from the file
    before the response starts: one deleted meanwhile is as if deleted first."""
    blobs = app.state.dicomweb.blobs
    for key in await blobs.keys():  # the rows stay: a DELETE between the two reads
        blobs.path_for(key).unlink()
    url = path.replace("jpeg2000", jpeg2000_path(), 1)
    response = await loaded.get(url)
    assert response.status_code == 404, response.text
    assert app.state.dicomweb.retrievals.busy() == 0


async def test_a_retrieval_is_audited_under_the_studys_patient(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Who read a patient's images is found by that patient (AuditEvent?patient=),
    though the reader's token names no patient; a search names none."""
    patient = await patients_study(client, app, "4.4")
    instance = "/dicomweb/studies/4.4/series/4.4.1/instances/4.4.1.1"
    assert (await client.get(f"{instance}/rendered")).status_code == 200
    assert (await client.get("/dicomweb/studies", params={"PatientID": "PAT-1"})).status_code == 200

    async def audited() -> list[str] | None:
        found = await client.get("/fhir/AuditEvent", params={"patient": patient, "_count": "100"})
        entities = [
            entity["what"].get("reference") or entity.get("description", "")
            for entry in found.json().get("entry", [])
            for entity in entry["resource"].get("entity", [])
        ]
        return entities if "ImagingStudy/4.4" in entities else None

    await eventually(audited, "the rendered read's AuditEvent under the patient")

    async def all_written() -> bool | None:
        return True if not app.state.audit.unwritten() else None

    await eventually(all_written, "the search's AuditEvent too")  # else its absence says nothing
    entities = await audited() or []
    assert not any("GET /dicomweb/studies?" in e for e in entities)  # the search's


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies/4.5",
        "/dicomweb/studies/4.5/series/4.5.1",  # the last one: the study goes with it
        "/dicomweb/studies/4.5/series/4.5.1/instances/4.5.1.1",
    ],
)
async def test_a_delete_is_audited_under_the_studys_patient(
    client: httpx.AsyncClient, app: FastAPI, path: str
) -> None:
    """Whose images were deleted is found by that patient, though nothing of the
    study may be left to look the patient up by once it is done."""
    patient = await patients_study(client, app, "4.5")
    assert (await client.delete(path)).status_code == 204

    async def audited() -> list[str] | None:
        found = await client.get("/fhir/AuditEvent", params={"patient": patient, "_count": "100"})
        told = [e["resource"].get("outcomeDesc", "") for e in found.json().get("entry", [])]
        return told if f"DICOMweb DELETE {path}" in told else None

    await eventually(audited, "the DELETE's AuditEvent under the patient")
