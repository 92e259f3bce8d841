"""The requests the OHIF viewer (v3, DicomWebDataSource + cornerstone's WADO-RS image
loader) makes to list and open a study, replayed from another origin with a bearer
token; each answer must carry what OHIF reads from it, and the CORS headers a
browser demands -- on errors too, which a browser would otherwise report as a
CORS failure with no status at all.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from pydicom import dcmread

from tests.conftest import BASE, MintToken
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, split_multipart

ORIGIN = "https://ohif.example.org"
STUDY, SERIES = "1.2.826.0.1.3680043.10.3.1", "1.2.826.0.1.3680043.10.3.1.1"
DICOM_JSON = "application/dicom+json"
# cornerstone's WADO-RS image loader, as OHIF configures it
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# OHIF's study list: qido.js mapParams
STUDY_LIST = {
    "limit": "101",
    "offset": "0",
    "fuzzymatching": "false",
    "includefield": "00081030,00080060",
}
# what OHIF's processResults / metadata store read at each level
STUDY_LIST_NEEDS = (
    "0020000D", "00080020", "00080030", "00080050", "00100010", "00100020",
    "00201208", "00081030", "00080061",
)  # fmt: skip
# (SeriesDescription too, when the data has one: PS3.18 returns it "if present")
SERIES_NEEDS = ("0020000E", "00080060", "00200011", "00201209", "00081190")
INSTANCE_NEEDS = (
    "00080016", "00080018", "0020000E", "0020000D", "00200013", "00280010", "00280011",
    "00280100", "00280101", "00280102", "00280103", "00280002", "00280004", "7FE00010",
)  # fmt: skip


@pytest.fixture
async def viewer(app: FastAPI, mint: MintToken) -> AsyncIterator[httpx.AsyncClient]:
    """A study of a 3-frame and a 1-frame CT, stored; then OHIF's HTTP client."""
    headers = {"Authorization": f"Bearer {mint('user/*.rs')}", "Origin": ORIGIN}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as admin:
        body = multipart(
            make_instance(STUDY, SERIES, f"{SERIES}.1", number=1, frames=3, name="Ohif^Test"),
            make_instance(STUDY, SERIES, f"{SERIES}.2", number=2, name="Ohif^Test"),
            bundled("JPEG2000.dcm").read_bytes(),
        )
        stored = await admin.post(
            "/dicomweb/studies",
            content=body,
            headers={"Authorization": f"Bearer {mint()}", "Content-Type": STOW_TYPE},
        )
        assert stored.status_code == 200, stored.text
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


def assert_cors(response: httpx.Response, *exposed: str) -> None:
    assert response.headers.get("access-control-allow-origin") in ("*", ORIGIN), response.headers
    names = {
        h.strip().lower()
        for h in response.headers.get("access-control-expose-headers", "").split(",")
    }
    assert {h.lower() for h in exposed} <= names


async def test_preflight_allows_what_ohif_sends(viewer: httpx.AsyncClient) -> None:
    for path in (
        "/dicomweb/studies",
        f"/dicomweb/studies/{STUDY}/series/{SERIES}/metadata",
        f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1/frames/1",
    ):
        response = await viewer.options(
            path,
            headers={
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,accept,if-none-match,"
                "cache-control",
            },
        )
        assert response.status_code == 200, path
        assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
        allowed = response.headers["access-control-allow-headers"].lower()
        assert {"authorization", "accept", "if-none-match", "cache-control"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert "GET" in response.headers["access-control-allow-methods"]


async def test_study_list_and_priors(viewer: httpx.AsyncClient) -> None:
    listed = await viewer.get(
        "/dicomweb/studies",
        params={**STUDY_LIST, "PatientName": "*ohif*", "StudyDate": "20240101-20241231"},
        headers={"Accept": DICOM_JSON},
    )
    assert listed.status_code == 200
    assert listed.headers["content-type"].startswith(DICOM_JSON)
    assert_cors(listed, "Warning")
    (study,) = listed.json()
    assert all(tag in study for tag in STUDY_LIST_NEEDS), set(STUDY_LIST_NEEDS) - study.keys()
    assert study["0020000D"]["Value"] == [STUDY]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Ohif^Test"}]
    assert study["00081030"]["Value"] == ["CHEST"]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00201208"]["Value"] == [2]
    # opening the viewer by UID, and the priors panel by patient
    for params in ({"StudyInstanceUID": STUDY}, {"PatientID": "PAT-1"}):
        found = await viewer.get("/dicomweb/studies", params={**STUDY_LIST, **params})
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [STUDY]


async def test_series_then_series_metadata(viewer: httpx.AsyncClient) -> None:
    series = await viewer.get(f"/dicomweb/studies/{STUDY}/series", headers={"Accept": DICOM_JSON})
    assert series.status_code == 200
    assert_cors(series)
    (one,) = series.json()
    assert all(tag in one for tag in SERIES_NEEDS), set(SERIES_NEEDS) - one.keys()
    assert one["00201209"]["Value"] == [2]
    url = f"/dicomweb/studies/{STUDY}/series/{SERIES}/metadata"
    meta = await viewer.get(url, headers={"Accept": DICOM_JSON, "Accept-Encoding": "gzip"})
    assert meta.status_code == 200
    assert meta.headers["content-type"].startswith(DICOM_JSON)
    assert meta.headers["content-encoding"] == "gzip"
    assert_cors(meta, "ETag")
    instances = meta.json()
    assert sorted(i["00080018"]["Value"][0] for i in instances) == [f"{SERIES}.1", f"{SERIES}.2"]
    for item in instances:
        assert all(tag in item for tag in INSTANCE_NEEDS), set(INSTANCE_NEEDS) - item.keys()
        assert item["7FE00010"]["BulkDataURI"].startswith(f"{BASE}/dicomweb/studies/{STUDY}/")
    multi = next(i for i in instances if i["00080018"]["Value"] == [f"{SERIES}.1"])
    assert multi["00280008"]["Value"] in ([3], ["3"])
    # OHIF revalidates with the ETag; the 304 must carry CORS headers too
    again = await viewer.get(url, headers={"If-None-Match": meta.headers["etag"]})
    assert again.status_code == 304
    assert_cors(again, "ETag")


async def test_frames_as_cornerstone_asks(viewer: httpx.AsyncClient) -> None:
    url = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1/frames/2"
    response = await viewer.get(url, headers={"Accept": FRAMES_ACCEPT})
    assert response.status_code == 200
    assert_cors(response, "Content-Location")
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related") and "application/octet-stream" in ctype
    assert "transfer-syntax=1.2.840.10008.1.2.1" in ctype.replace('"', "")
    (frame,) = split_multipart(response.content, ctype)
    assert len(frame) == 8 * 8 * 2  # rows x columns x 2 bytes, uncompressed
    ds = dcmread(bundled("JPEG2000.dcm"), stop_before_pixels=True)
    compressed = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    decoded = await viewer.get(compressed, headers={"Accept": FRAMES_ACCEPT})
    assert decoded.status_code == 200
    (pixels,) = split_multipart(decoded.content, decoded.headers["content-type"])
    assert len(pixels) == ds.Rows * ds.Columns * ds.BitsAllocated // 8


async def test_rendered_and_thumbnails(viewer: httpx.AsyncClient) -> None:
    instance = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1"
    for path in (
        f"{instance}/rendered",
        f"{instance}/frames/1/rendered",
        f"{instance}/thumbnail",
        f"/dicomweb/studies/{STUDY}/series/{SERIES}/thumbnail",
    ):
        response = await viewer.get(path, headers={"Accept": "image/jpeg"})
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/jpeg"
        assert_cors(response)
        assert Image.open(io.BytesIO(response.content)).format == "JPEG"


async def test_errors_carry_cors_headers(viewer: httpx.AsyncClient, app: FastAPI) -> None:
    study = f"/dicomweb/studies/{STUDY}"
    unknown = await viewer.get(f"{study}/series/9.9.9/metadata")
    assert unknown.status_code == 404
    assert_cors(unknown)
    refused = await viewer.get(
        f"{study}/series/{SERIES}/instances/{SERIES}.1/frames/1",
        headers={"Accept": "multipart/related; type=image/webp"},
    )
    assert refused.status_code == 406
    assert_cors(refused)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as anonymous:
        expired = await anonymous.get(
            "/dicomweb/studies", headers={"Origin": ORIGIN, "Authorization": "Bearer nope"}
        )
        assert expired.status_code == 401
        assert_cors(expired, "WWW-Authenticate")  # a SMART app reads why it was refused
        assert "bearer" in expired.headers.get("www-authenticate", "").lower()
