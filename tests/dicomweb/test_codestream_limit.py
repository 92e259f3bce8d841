"""Frames whose own codestream declares a larger image than their Rows and Columns,
through the real ASGI stack.

The JPEG family's decoders size their output from the codestream, so these
frames are judged by it (``codestream_size``) as frames too large by their
attributes are (the RLE cases of test_rendering and test_wado_negotiation): a
rendering is refused (413), a retrieval that needs decoding is sent as stored
where the Accept header allows, else 406 saying how to ask for it. The
codestreams are real ones, made here: black images of 1024x1024, a few hundred
bytes (JPEG 2000) or KB (JPEG), in instances of 64x64 and 16x16.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from openjpeg.utils import encode_array
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)

from tests.dicomweb.archive_app import fast_settings, running
from tests.dicomweb.dicom_data import STOW_TYPE, multipart, part10, split_multipart

STUDY = "1.2.826.0.1.3680043.10.9903"
SERIES = f"{STUDY}.1"
INSTANCES = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances"
LIMIT = 2**19  # 512 KiB decoded at once
ELE = ExplicitVRLittleEndian
UNCOMPRESSED = {
    "Accept": f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}"
}
DICOM = 'multipart/related; type="application/dicom"'


def j2k(side: int) -> bytes:
    """A black 16-bit greyscale image, ``side``² of it, as a JPEG 2000 codestream."""
    grey = 2  # pylibjpeg-openjpeg's greyscale colour space
    pixels = np.zeros((side, side), np.uint16)
    return encode_array(pixels, bits_stored=16, photometric_interpretation=grey, use_mct=False)


def jpeg(side: int) -> bytes:
    """A black 8-bit greyscale image, ``side``² of it, as a baseline JPEG."""
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, "JPEG")
    return out.getvalue()


def instance(sop: str, syntax: str, codestream: bytes, side: int, bits: int) -> bytes:
    """A ``side``x``side`` greyscale image whose one frame is ``codestream``."""
    ds = part10(SecondaryCaptureImageStorage, sop, syntax, STUDY, SERIES)
    ds.PatientID, ds.PatientName, ds.Modality = "PAT-CS", "Codestream^Test", "OT"
    ds.InstanceNumber = int(sop.rsplit(".", 1)[1])
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


# (codestream, instance, what the codestream declares): 64x64 declaring 1024x1024
# 16-bit (2 MiB), 16x16 declaring 1024x1024 8-bit (1 MiB); small files either way
CODESTREAMS = {"j2k": j2k(1024), "jpeg": jpeg(1024)}
LIARS = {
    "j2k": (
        CODESTREAMS["j2k"],
        instance(f"{SERIES}.1", JPEG2000Lossless, CODESTREAMS["j2k"], 64, 16),
        "2,097,152 bytes",
    ),
    "jpeg": (
        CODESTREAMS["jpeg"],
        instance(f"{SERIES}.2", JPEGBaseline8Bit, CODESTREAMS["jpeg"], 16, 8),
        "1,048,576 bytes",
    ),
}
LOSSY = {"jpeg"}
HONEST = {
    "j2k": instance(f"{SERIES}.3", JPEG2000Lossless, j2k(64), 64, 16),
    "jpeg": instance(f"{SERIES}.4", JPEGBaseline8Bit, jpeg(16), 16, 8),
}


def url(data: bytes) -> str:
    return f"{INSTANCES}/{dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID}"


def uri(data: bytes) -> dict[str, str]:
    sop = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    return {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": sop}


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = fast_settings(tmp_path / "data", max_decoded_bytes=LIMIT)
    async with running(settings) as (_, client):
        stored = [data for _, data, _ in LIARS.values()] + list(HONEST.values())
        response = await client.post(
            "/dicomweb/studies", content=multipart(*stored), headers={"Content-Type": STOW_TYPE}
        )
        assert response.status_code == 200, response.text
        yield client


def refused_for_size(response: httpx.Response, declared: str) -> bool:
    """A 413 saying what the codestream declares, and the limit."""
    return (
        response.status_code == 413
        and declared in response.json()["message"]
        and "more than the 524,288" in response.headers["warning"]
    )


def told_to_ask_as_stored(response: httpx.Response, declared: str) -> bool:
    """A 406 whose message says what the codestream declares, and whose Warning says
    how to have the data as stored."""
    warning = response.headers.get("warning", "")
    return (
        response.status_code == 406
        and declared in response.json()["message"]
        and "transfer-syntax=*" in warning
    )


ROADS = ["rendered", "thumbnail", "frames/1/rendered", "frames/1/thumbnail"]


@pytest.mark.parametrize("road", ROADS)
@pytest.mark.parametrize("codec", LIARS)
async def test_a_frame_declaring_more_than_the_limit_is_not_rendered(
    limited: httpx.AsyncClient, codec: str, road: str
) -> None:
    _, data, declared = LIARS[codec]
    assert refused_for_size(await limited.get(f"{url(data)}/{road}"), declared)


@pytest.mark.parametrize("codec", LIARS)
async def test_nor_through_wado_uri(limited: httpx.AsyncClient, codec: str) -> None:
    _, data, declared = LIARS[codec]
    assert refused_for_size(await limited.get("/dicomweb/wado", params=uri(data)), declared)


@pytest.mark.parametrize("codec", LIARS)
async def test_the_instance_is_sent_as_stored_or_406(
    limited: httpx.AsyncClient, codec: str
) -> None:
    _, data, declared = LIARS[codec]
    for accept in (f"{DICOM}; transfer-syntax={ELE}", f"application/dicom; transfer-syntax={ELE}"):
        refused = await limited.get(url(data), headers={"Accept": accept})
        assert told_to_ask_as_stored(refused, declared), accept
    # by default, lossless data is sent transcoded or not at all, lossy data may also
    # go as stored (PS3.18 §8.7.3.4)
    default = await limited.get(url(data))
    if codec in LOSSY:
        assert default.status_code == 200 and data in default.content
    else:
        assert told_to_ask_as_stored(default, declared)
    as_stored = await limited.get(url(data), headers={"Accept": f"{DICOM}; transfer-syntax=*"})
    assert as_stored.status_code == 200 and data in as_stored.content
    params = uri(data) | {"contentType": "application/dicom", "transferSyntax": ELE}
    assert told_to_ask_as_stored(await limited.get("/dicomweb/wado", params=params), declared)


@pytest.mark.parametrize("where", ["frames/1", "bulkdata/7FE00010"])
@pytest.mark.parametrize("codec", LIARS)
async def test_its_frame_and_pixel_data_are_sent_as_stored_or_406(
    limited: httpx.AsyncClient, codec: str, where: str
) -> None:
    codestream, data, declared = LIARS[codec]
    refused = await limited.get(f"{url(data)}/{where}", headers=UNCOMPRESSED)
    assert told_to_ask_as_stored(refused, declared)
    compressed = await limited.get(f"{url(data)}/{where}")  # any transfer syntax
    assert compressed.status_code == 200
    (part,) = split_multipart(compressed.content, compressed.headers["content-type"])
    assert part.removesuffix(b"\x00") == codestream


@pytest.mark.parametrize("codec", HONEST)
async def test_a_frame_declaring_what_it_is_is_decoded(
    limited: httpx.AsyncClient, codec: str
) -> None:
    data = HONEST[codec]
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    rendered = await limited.get(f"{url(data)}/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200, rendered.text
    assert Image.open(io.BytesIO(rendered.content)).size == (ds.Columns, ds.Rows)
    frame = await limited.get(f"{url(data)}/frames/1", headers=UNCOMPRESSED)
    assert frame.status_code == 200, frame.text
    (pixels,) = split_multipart(frame.content, frame.headers["content-type"])
    assert len(pixels) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
    whole = await limited.get(url(data))
    assert whole.status_code == 200
    assert f"transfer-syntax={ELE}" in whole.headers["content-type"]
