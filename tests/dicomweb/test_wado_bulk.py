"""Bulk data of whole studies, series and instances, and their Pixel Data resources
(PS3.18 §10.4.1.1.5-6, Table 10.4.4-1), through the real ASGI stack."""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import ExplicitVRBigEndian

from tests.conftest import MintToken
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart
from tests.dicomweb.test_wado_negotiation import (
    OVERLAY,
    RLE,
    RLE_2,
    parts,
    uids_of,
    url,
    with_overlay,
)

OCTETS = 'multipart/related; type="application/octet-stream"'
DICOM = 'multipart/related; type="application/dicom"'
STUDY = "1.2.3.20"
SERIES = f"/dicomweb/studies/{STUDY}/series/{STUDY}.1"
FRAMES = make_instance(STUDY, f"{STUDY}.1", f"{STUDY}.1.1", number=1, frames=3)
OVERLAID = with_overlay(make_instance(STUDY, f"{STUDY}.1", f"{STUDY}.1.2", number=2))
OTHER_SERIES = make_instance(STUDY, f"{STUDY}.2", f"{STUDY}.2.1", number=1)


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> httpx.AsyncClient:
    body = multipart(FRAMES, OVERLAID, OTHER_SERIES, RLE_2)
    response = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return client


async def bulk_uris(client: httpx.AsyncClient, path: str) -> list[str]:
    """Every BulkDataURI the metadata of ``path`` gives (top level: these have none nested)."""
    docs = (await client.get(f"{path}/metadata")).json()
    return [e["BulkDataURI"] for doc in docs for e in doc.values() if "BulkDataURI" in e]


def values() -> dict[str, bytes]:
    """What each bulk data value of the study is, by the end of its URI."""
    return {
        f"{url(FRAMES)}/bulkdata/7FE00010": dcmread(io.BytesIO(FRAMES)).PixelData,
        f"{url(OVERLAID)}/bulkdata/7FE00010": dcmread(io.BytesIO(OVERLAID)).PixelData,
        f"{url(OVERLAID)}/bulkdata/60003000": OVERLAY,
        f"{url(OTHER_SERIES)}/bulkdata/7FE00010": dcmread(io.BytesIO(OTHER_SERIES)).PixelData,
    }


def by_location(response: httpx.Response) -> dict[str, bytes]:
    """Each part's body by its Content-Location, less the base URL."""
    found: dict[str, bytes] = {}
    for headers, body in parts(response):
        assert headers["content-type"].startswith("application/octet-stream")
        location = headers["content-location"]
        found[location[location.index("/dicomweb/") :]] = body
    return found


@pytest.mark.parametrize(
    ("path", "accept", "scope"),
    [
        (f"/dicomweb/studies/{STUDY}", OCTETS, None),
        (f"/dicomweb/studies/{STUDY}", f"{OCTETS}, {DICOM};q=0.5", None),
        (SERIES, OCTETS, f"{STUDY}.1/"),
        (url(OVERLAID), OCTETS, f"{STUDY}.1.2/"),
        (f"/dicomweb/studies/{STUDY}/bulkdata", None, None),
        (f"{SERIES}/bulkdata", "*/*", f"{STUDY}.1/"),
        (f"{url(OVERLAID)}/bulkdata", OCTETS, f"{STUDY}.1.2/"),
    ],
)
async def test_a_resources_bulk_data_is_every_value_metadata_names(
    stored: httpx.AsyncClient, path: str, accept: str | None, scope: str | None
) -> None:
    response = await stored.get(path, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(OCTETS)
    sent = by_location(response)
    expected = {uri: v for uri, v in values().items() if scope is None or scope in uri}
    assert sent == expected
    # each part's Content-Location is the BulkDataURI its metadata gives
    resource = path.removesuffix("/bulkdata")
    named = {uri[uri.index("/dicomweb/") :] for uri in await bulk_uris(stored, resource)}
    assert set(sent) == named
    for location, body in sent.items():  # and the value that URI serves alone
        alone = await stored.get(location, headers={"Accept": "application/octet-stream"})
        assert alone.content == body


@pytest.mark.parametrize(
    ("path", "count"),
    [
        (f"/dicomweb/studies/{STUDY}/pixeldata", 3),
        (f"{SERIES}/pixeldata", 2),
        (f"{url(OVERLAID)}/pixeldata", 1),
    ],
)
async def test_pixel_data_resources_hold_only_pixel_data(
    stored: httpx.AsyncClient, path: str, count: int
) -> None:
    response = await stored.get(path)
    assert response.status_code == 200, response.text
    sent = by_location(response)
    assert len(sent) == count
    assert all(location.endswith("/bulkdata/7FE00010") for location in sent)
    assert all(values()[location] == body for location, body in sent.items())


async def test_compressed_pixel_data_decoded_or_as_stored_frames(
    stored: httpx.AsyncClient,
) -> None:
    study = f"/dicomweb/studies/{uids_of(RLE_2)[0]}"
    source = bundled("SC_rgb_rle_2frame.dcm")
    decoded = await stored.get(f"{study}/pixeldata")
    assert [body for _, body in parts(decoded)] == [pixel_array(source, raw=True).tobytes()]
    rle = await stored.get(
        f"{study}/pixeldata", headers={"Accept": "multipart/related; type=image/dicom-rle"}
    )
    assert rle.status_code == 200
    sent = parts(rle)
    frames = list(generate_frames(dcmread(source).PixelData, number_of_frames=2))
    assert [body for _, body in sent] == frames
    assert [h["content-type"] for h, _ in sent] == [f"image/dicom-rle; transfer-syntax={RLE}"] * 2
    assert all(h["content-location"].endswith(f"/frames/{n}") for n, (h, _) in enumerate(sent, 1))
    refused = await stored.get(
        f"{study}/pixeldata", headers={"Accept": "multipart/related; type=image/jp2"}
    )
    assert refused.status_code == 406


async def test_unknown_hidden_or_unacceptable(
    stored: httpx.AsyncClient, app: FastAPI, mint: MintToken
) -> None:
    base = f"/dicomweb/studies/{STUDY}"
    for path in (
        "/dicomweb/studies/9.9.9/bulkdata",
        f"{base}/series/9.9/pixeldata",
        f"{base}/series/{STUDY}.1/instances/9.9/bulkdata",
    ):
        assert (await stored.get(path)).status_code == 404, path
    stranger = {"Authorization": f"Bearer {mint('patient/*.rs', patient='someone-else')}"}
    for path in (f"{base}/bulkdata", f"{base}/pixeldata", base):
        response = await stored.get(path, headers=stranger | {"Accept": OCTETS})
        assert response.status_code == 404, path
    for accept in ("application/dicom", DICOM, "application/octet-stream", "text/html"):
        response = await stored.get(f"{base}/bulkdata", headers={"Accept": accept})
        assert response.status_code == 406, accept
    instances = await stored.get(base, headers={"Accept": f"{DICOM}, {OCTETS};q=0.5"})
    assert instances.status_code == 200
    assert instances.headers["content-type"].startswith(DICOM)
    assert app.state.dicomweb.retrievals.busy() == 0


async def sent_through(app: FastAPI, token: str, path: str) -> tuple[int, int, int]:
    """GET ``path`` straight through the ASGI app, counting the body's bytes and not
    keeping them: the status, the body's size, and the most memory traced meanwhile."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"radhub.test"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("radhub.test", 80),
    }
    status, size, asked = 0, 0, False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays until the body is over
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    tracemalloc.start()
    try:
        await app(scope, receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return status, size, peak


async def test_a_study_is_streamed_not_held(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken
) -> None:
    large = []
    for n in range(1, 5):  # four instances of 8 MiB pixel data each
        ds = dcmread(io.BytesIO(make_instance("1.2.3.21", "1.2.3.21.1", f"1.2.3.21.1.{n}")))
        ds.Rows, ds.Columns = 2048, 2048
        ds.PixelData = bytes([n]) * (2048 * 2048 * 2)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        large.append(out.getvalue())
    response = await client.post(
        "/dicomweb/studies", content=multipart(*large), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200
    status, size, peak = await sent_through(app, mint(), "/dicomweb/studies/1.2.3.21/bulkdata")
    assert status == 200
    assert size > 4 * 2048 * 2048 * 2
    assert peak < 8 * 1024 * 1024  # less than one instance's pixel data


DOCUMENT = 0x00420011  # EncapsulatedDocument, OB
WAVEFORMS, WAVEFORM_DATA = 0x54000100, 0x54001010  # WaveformSequence > WaveformData, OW


def with_large_values(study: str, sop: str, document: bytes, samples: bytes, *, big: bool) -> bytes:
    """An instance holding a large document (OB) and a large waveform (OW, ``samples``
    as little endian 16-bit numbers), stored little or ``big`` endian."""
    ds = dcmread(io.BytesIO(make_instance(study, f"{study}.1", sop)))
    ds.add_new(DOCUMENT, "OB", document)
    item = Dataset()
    item.WaveformBitsAllocated, item.WaveformSampleInterpretation = 16, "SS"
    numbers = np.frombuffer(samples, "<u2")
    item.add_new(WAVEFORM_DATA, "OW", numbers.astype(">u2" if big else "<u2").tobytes())
    ds.add_new(WAVEFORMS, "SQ", [item])
    out = io.BytesIO()
    if big:  # (the pixel data's bytes go as they are: only the values above are checked)
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        dcmwrite(out, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    else:
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("big", [False, True], ids=["little-endian", "big-endian"])
async def test_large_values_besides_pixel_data_are_sent_from_the_file(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken, big: bool
) -> None:
    """A document and a waveform of 10 MiB each are sent a block at a time from
    the stored file, at every level and as the one value a BulkDataURI names: the
    bytes as stored, numbers little endian (a big endian file's swapped across the
    blocks), and never the whole value in memory."""
    study = "1.2.3.22" if big else "1.2.3.23"
    sop = f"{study}.1.1"
    document = bytes(range(256)) * (10 * 4096) + b"end"  # 10 MiB and an odd tail
    samples = np.arange(5 * 2**20 + 7, dtype="<u2").tobytes()  # 10 MiB, not whole blocks
    stored = with_large_values(study, sop, document, samples, big=big)
    response = await client.post(
        "/dicomweb/studies", content=multipart(stored), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    instance = f"/dicomweb/studies/{study}/series/{study}.1/instances/{sop}"
    expected = {
        f"{instance}/bulkdata/{DOCUMENT:08X}": document + b"\0",  # padded to even length
        f"{instance}/bulkdata/{WAVEFORMS:08X}/0/{WAVEFORM_DATA:08X}": samples,
    }
    for path in (f"/dicomweb/studies/{study}", instance):
        got = await client.get(f"{path}/bulkdata", headers={"Accept": OCTETS})
        assert got.status_code == 200
        sent = by_location(got)
        assert {location: sent.get(location) for location in expected} == expected
        assert set(sent) - set(expected) == {f"{instance}/bulkdata/7FE00010"}
    for location, value in expected.items():
        got = await client.get(location, headers={"Accept": "application/octet-stream"})
        assert (got.status_code, got.content) == (200, value)
        assert got.headers["content-length"] == str(len(value))
    status, size, peak = await sent_through(app, mint(), f"/dicomweb/studies/{study}/bulkdata")
    assert status == 200 and size > len(document) + len(samples)
    assert peak < 8 * 1024 * 1024  # less than either value
