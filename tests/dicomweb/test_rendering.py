"""Rendered images, thumbnails, WADO-URI and 4:2:2 frames through the real ASGI stack.

Expected pixels are computed here from the PS3.3 formulas (VOI windows §C.11.2.1.2,
palettes §C.7.6.3.1.5, YBR_FULL §C.7.6.3.1.2), never by the code under test.
Greyscale results are compared as PNG (lossless), within 1 for rounding.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicomweb.decode_limit import DEFAULT_MAX_DECODED_BYTES
from dicomweb.render import THUMBNAIL, RenderOptions, Viewport, render
from tests.dicomweb.archive_app import fast_settings, running
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import (
    STOW_TYPE,
    make_instance,
    multipart,
    part10,
    rle_instance,
    split_multipart,
)

STUDY = "1.2.826.0.1.3680043.10.9901"
SERIES = f"{STUDY}.1"
INSTANCES = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances"
PNG = {"Accept": "image/png"}
RAMP = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095, row-major
Pixels = np.ndarray[Any, Any]


def dicom(sop: str, pixels: Pixels | None, **attrs: Any) -> bytes:
    """A native Explicit VR Little Endian image; ``attrs`` set or override attributes
    (``PixelData`` as bytes for layouts numpy does not describe, such as 4:2:2)."""
    ds = part10(SecondaryCaptureImageStorage, sop, ExplicitVRLittleEndian, STUDY, SERIES)
    ds.Modality = "OT"
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "PAT-R", "Render^Test", "ACC-R"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def stow(client: httpx.AsyncClient, *parts: bytes) -> None:
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text


async def put(client: httpx.AsyncClient, sop: str, pixels: Pixels | None, **attrs: Any) -> str:
    """Store one generated image; its WADO-RS URL."""
    await stow(client, dicom(sop, pixels, **attrs))
    return f"{INSTANCES}/{sop}"


def url_of(ds: Dataset) -> str:
    series = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


def pixels_of(response: httpx.Response) -> Pixels:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def close(actual: Pixels, expected: Pixels) -> bool:
    return bool(np.all(np.abs(actual.astype(float) - np.rint(expected)) <= 1))


# PS3.3 §C.11.2.1.2.1 and §C.11.2.1.3, with ymin = 0 and ymax = 255, written as the
# standard's piecewise definitions.
def linear(x: Pixels, c: float, w: float) -> Pixels:
    inside = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.select([x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2], [0, 255], inside)


def linear_exact(x: Pixels, c: float, w: float) -> Pixels:
    inside = ((x - c) / w + 0.5) * 255
    return np.select([x <= c - w / 2, x > c + w / 2], [0, 255], inside)


def sigmoid(x: Pixels, c: float, w: float) -> Pixels:
    return 255 / (1 + np.exp(-4 * (x - c) / w))


def full_range(x: Pixels) -> Pixels:
    return (x - x.min()) / (x.max() - x.min()) * 255


async def test_dataset_window_is_applied_after_rescale_without_restretch(
    client: httpx.AsyncClient,
) -> None:
    rescale = {"RescaleSlope": 2, "RescaleIntercept": -1000}
    windowed = await put(client, f"{SERIES}.1", RAMP, WindowCenter=900, WindowWidth=4000, **rescale)
    plain = await put(client, f"{SERIES}.2", RAMP, **rescale)
    values = RAMP * 2.0 - 1000
    got = pixels_of(await client.get(f"{windowed}/rendered", headers=PNG))
    assert close(got, linear(values, 900, 4000))
    default = pixels_of(await client.get(f"{plain}/rendered", headers=PNG))
    assert close(default, full_range(values))
    assert np.abs(got.astype(int) - default).max() > 50  # the window was not stretched away


async def test_first_of_several_dataset_windows(client: httpx.AsyncClient) -> None:
    # a window that does not reach 0 at the ramp's foot: a re-stretch would show
    url = await put(client, f"{SERIES}.3", RAMP, WindowCenter=[900, 100], WindowWidth=[4000, 50])
    got = pixels_of(await client.get(f"{url}/rendered", headers=PNG))
    assert close(got, linear(RAMP.astype(float), 900, 4000)) and got.min() > 60


@pytest.mark.parametrize(
    ("function", "formula"), [("LINEAR_EXACT", linear_exact), ("SIGMOID", sigmoid)]
)
async def test_dataset_voi_lut_function(
    client: httpx.AsyncClient, function: str, formula: Any
) -> None:
    url = await put(
        client, f"{SERIES}.4", RAMP, WindowCenter=1000, WindowWidth=4000, VOILUTFunction=function
    )
    got = pixels_of(await client.get(f"{url}/rendered", headers=PNG))
    assert close(got, formula(RAMP.astype(float), 1000, 4000)) and got.min() > 20


@pytest.mark.parametrize(
    ("window", "formula"),
    [
        ("3000,801", linear),
        ("3000,801,linear", linear),
        ("3000,801,linear-exact", linear_exact),
        ("3000,801,sigmoid", sigmoid),
        ("3000,1,linear", linear),
    ],
)
async def test_requested_window_overrides_the_dataset(
    client: httpx.AsyncClient, window: str, formula: Any
) -> None:
    url = await put(client, f"{SERIES}.5", RAMP, WindowCenter=40, WindowWidth=400)
    response = await client.get(f"{url}/rendered", params={"window": window}, headers=PNG)
    c, w = (float(v) for v in window.split(",")[:2])
    expected = np.where(RAMP > c - 0.5, 255, 0) if w == 1 else formula(RAMP.astype(float), c, w)
    assert close(pixels_of(response), expected)


@pytest.mark.parametrize(
    "window",
    [
        "1,0,linear",
        "1,0.5",
        "1,0.5,linear",
        "1,-3,sigmoid",
        "1,0,linear-exact",
        "a,1",
        "1,b",
        "1,2,cubic",
        "1",
        "1,2,linear,4",
        "nan,5",
        "inf,5",
        "1_0,5",
        "１,5",
        "1,1e999",
        "",
    ],
)
async def test_bad_window_is_400(client: httpx.AsyncClient, window: str) -> None:
    url = await put(client, f"{SERIES}.6", RAMP)
    response = await client.get(f"{url}/rendered", params={"window": window})
    assert response.status_code == 400, window
    assert "window" in response.json()["message"]


async def test_monochrome1_is_inverted(client: httpx.AsyncClient) -> None:
    url = await put(client, f"{SERIES}.7", RAMP, PhotometricInterpretation="MONOCHROME1")
    got = pixels_of(await client.get(f"{url}/rendered", headers=PNG))
    assert close(got, 255 - full_range(RAMP.astype(float)))
    assert got[0, 0] == 255 and got[-1, -1] == 0


async def test_voi_lut_sequence(client: httpx.AsyncClient) -> None:
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype("<u2")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    url = await put(client, f"{SERIES}.8", RAMP, VOILUTSequence=[item])
    got = pixels_of(await client.get(f"{url}/rendered", headers=PNG))
    assert close(got, lut[RAMP].astype(float) * 255 / 65535)


async def test_palette_color_is_rendered_in_colour(client: httpx.AsyncClient) -> None:
    path = bundled("examples_palette.dcm")
    await stow(client, path.read_bytes())
    ds = dcmread(path)
    got = pixels_of(await client.get(f"{url_of(ds)}/rendered", headers=PNG))
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    indices = np.frombuffer(ds.PixelData, np.uint8)[: ds.Rows * ds.Columns]
    indices = indices.reshape(ds.Rows, ds.Columns).astype(int) - first
    channels = [
        np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2").astype(float)
        for c in ("Red", "Green", "Blue")
    ]
    expected = np.stack([lut[np.clip(indices, 0, len(lut) - 1)] for lut in channels], axis=-1)
    assert got.shape == (ds.Rows, ds.Columns, 3)
    assert close(got, expected * 255 / 65535)
    assert np.any(got[..., 0] != got[..., 2])  # not greyscale indices


async def test_quality_and_its_validation(client: httpx.AsyncClient) -> None:
    noise = np.random.default_rng(7).integers(0, 4096, (64, 64), dtype=np.uint16)
    url = await put(client, f"{SERIES}.9", noise)
    low = await client.get(f"{url}/rendered", params={"quality": "5"})
    high = await client.get(f"{url}/rendered", params={"quality": "95"})
    assert low.headers["content-type"] == high.headers["content-type"] == "image/jpeg"
    assert len(low.content) * 2 < len(high.content)
    for bad in ("0", "101", "abc", "50.5", ""):
        response = await client.get(f"{url}/rendered", params={"quality": bad})
        assert response.status_code == 400, bad
        assert "quality" in response.json()["message"]


async def test_accept_query_parameter_overrides_the_header(client: httpx.AsyncClient) -> None:
    url = await put(client, f"{SERIES}.10", RAMP)
    jpeg = {"Accept": "image/jpeg"}
    png = await client.get(f"{url}/rendered", params={"accept": "image/png"}, headers=jpeg)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    gif = await client.get(f"{url}/thumbnail", params={"accept": "image/gif"}, headers=jpeg)
    assert gif.headers["content-type"] == "image/gif" and gif.content[:4] == b"GIF8"
    weighted = await client.get(
        f"{url}/rendered", params={"accept": "image/jpeg;q=0.4, image/png"}, headers=jpeg
    )
    assert weighted.headers["content-type"] == "image/png"
    refused = await client.get(f"{url}/rendered", params={"accept": "text/html"}, headers=jpeg)
    assert refused.status_code == 406


async def test_viewport_fits_and_enlarges_keeping_the_aspect_ratio(
    client: httpx.AsyncClient,
) -> None:
    wide = await put(client, f"{SERIES}.11", RAMP[:16, :32].copy())  # 32 wide, 16 high
    for viewport, size in (
        ("100,100", (100, 50)),
        ("10,100", (10, 5)),
        (",64", (128, 64)),
        ("64,", (64, 32)),
        ("32,16", (32, 16)),
    ):
        response = await client.get(f"{wide}/rendered", params={"viewport": viewport})
        assert Image.open(io.BytesIO(response.content)).size == size, viewport
    thumb = await client.get(f"{wide}/thumbnail")
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 16)  # a thumbnail never grows
    sized = await client.get(f"{wide}/thumbnail", params={"viewport": "64,64"})
    assert Image.open(io.BytesIO(sized.content)).size == (64, 32)


@pytest.mark.parametrize(
    "viewport",
    [
        "1",
        "1,2,3",
        "0,5",
        "5,-1",
        "a,b",
        ",",
        "1,2,0,0,0,4",
        "1,2,-1,0,4,4",
        "1,2,0,0,a,4",
        "4,4,32,0,4,4",
        "4,4,0,16,,",
    ],
)
async def test_bad_viewport_is_400(client: httpx.AsyncClient, viewport: str) -> None:
    url = await put(client, f"{SERIES}.12", RAMP[:16, :32].copy())
    response = await client.get(f"{url}/rendered", params={"viewport": viewport})
    assert response.status_code == 400, viewport
    assert "viewport" in response.json()["message"]


async def test_viewport_source_region_and_flips(client: httpx.AsyncClient) -> None:
    image = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    image[-1, -1] = 255  # with 0 and 255 present the default window is the identity
    url = await put(client, f"{SERIES}.13", image)
    region = image[1:4, 2:6]
    for viewport, expected in (
        ("4,3,2,1,4,3", region),
        ("4,3,2,1,-4,3", region[:, ::-1]),
        ("4,3,2,1,4,-3", region[::-1, :]),
        ("4,3,2,1,-4,-3", region[::-1, ::-1]),
        ("8,8,6,6,,", image[6:, 6:]),  # sw, sh default to the image's edge, then enlarged
    ):
        got = pixels_of(
            await client.get(f"{url}/rendered", params={"viewport": viewport}, headers=PNG)
        )
        if got.shape == expected.shape:
            assert np.array_equal(got, expected), viewport
        else:
            assert got.shape == (8, 8), viewport


async def test_ybr_full_422_frames_are_their_stored_bytes(client: httpx.AsyncClient) -> None:
    path = bundled("SC_ybr_full_422_uncompressed.dcm")
    await stow(client, path.read_bytes())
    ds = dcmread(path)
    response = await client.get(f"{url_of(ds)}/frames/1")
    assert response.status_code == 200
    (frame,) = split_multipart(response.content, response.headers["content-type"])
    assert len(frame) == ds.Rows * ds.Columns * 2 and frame == ds.PixelData

    # two 2x4 frames of 16 bytes each (Y1 Y2 Cb Cr per pixel pair)
    data = bytes(range(32))
    ybr = {"SamplesPerPixel": 3, "PhotometricInterpretation": "YBR_FULL_422", "PixelData": data}
    geometry = {"Rows": 2, "Columns": 4, "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}
    url = await put(
        client,
        f"{SERIES}.14",
        None,
        PlanarConfiguration=0,
        PixelRepresentation=0,
        NumberOfFrames=2,
        **ybr,
        **geometry,
    )
    both = await client.get(f"{url}/frames/2,1")
    assert split_multipart(both.content, both.headers["content-type"]) == [data[16:], data[:16]]


async def test_ybr_full_422_renders_as_rgb(client: httpx.AsyncClient) -> None:
    path = bundled("SC_ybr_full_422_uncompressed.dcm")
    await stow(client, path.read_bytes())
    ds = dcmread(path)
    got = pixels_of(await client.get(f"{url_of(ds)}/rendered", headers=PNG))
    pairs = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns // 2, 4)
    y = pairs[..., :2].reshape(ds.Rows, ds.Columns).astype(float)
    cb = np.repeat(pairs[..., 2], 2, axis=1) - 128.0
    cr = np.repeat(pairs[..., 3], 2, axis=1) - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    assert got.shape == (ds.Rows, ds.Columns, 3)
    assert np.abs(got.astype(float) - np.clip(rgb, 0, 255)).max() <= 2


async def test_rendered_frame_out_of_range_is_400(client: httpx.AsyncClient) -> None:
    await stow(client, make_instance(STUDY, SERIES, f"{SERIES}.15", frames=3))
    url = f"{INSTANCES}/{SERIES}.15"
    assert (await client.get(f"{url}/frames/3/rendered")).status_code == 200
    response = await client.get(f"{url}/frames/4/rendered")
    assert response.status_code == 400 and "frame" in response.json()["message"]
    for malformed in ("0", "-1", "one"):
        assert (await client.get(f"{url}/frames/{malformed}/rendered")).status_code == 400


def uri(sop: str, **params: str) -> dict[str, str]:
    ids = {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": sop}
    return ids | params


async def test_wado_uri_frame_number(client: httpx.AsyncClient) -> None:
    await stow(client, make_instance(STUDY, SERIES, f"{SERIES}.16", frames=3))
    ok = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.16", frameNumber="3"))
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    for bad in ("abc", "0", "-1", "4", "1.5"):
        response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.16", frameNumber=bad))
        assert response.status_code == 400, bad


# Integer parameters of rendered resources and WADO-URI: (parameter, value, status);
# ``frame`` is the frame number in the URL path. Only ASCII digits are integers:
# int() also takes other scripts' digits and ``_`` (and str.isdigit() passes ``²``,
# which int() then refuses: that was a 500).
RENDER_INTEGERS: list[tuple[str, str, int]] = [
    ("frame", "2", 200),
    ("frame", "１", 400),
    ("frame", "²", 400),
    ("frame", "٢", 400),
    ("frame", "1_0", 400),
    ("frame", str(2**63), 400),  # no such frame
    ("quality", "50", 200),
    ("quality", " 50 ", 200),
    ("quality", "５０", 400),
    ("quality", "5_0", 400),
    ("quality", "²", 400),
    ("viewport", "4, 4", 200),
    ("viewport", "4_0,4", 400),
    ("viewport", "４,4", 400),
    ("frameNumber", "3", 200),
    ("frameNumber", "１", 400),
    ("frameNumber", "²", 400),
    ("frameNumber", "1_0", 400),
    ("frameNumber", "9" * 5000, 400),  # more digits than int() reads by default
    ("imageQuality", "５０", 400),
    ("imageQuality", "5_0", 400),
    ("rows", "1_6", 400),
]


async def test_integer_parameters_are_ascii_digits(client: httpx.AsyncClient) -> None:
    sop = f"{SERIES}.17"
    await stow(client, make_instance(STUDY, SERIES, sop, frames=3))
    wrong = []
    for name, value, status in RENDER_INTEGERS:
        if name == "frame":
            response = await client.get(f"{INSTANCES}/{sop}/frames/{value}/rendered")
        elif name in ("quality", "viewport"):
            response = await client.get(f"{INSTANCES}/{sop}/rendered", params={name: value})
        else:
            response = await client.get("/dicomweb/wado", params=uri(sop, **{name: value}))
        if response.status_code != status:
            wrong.append((name, value[:20], status, response.status_code))
    assert wrong == []


async def test_wado_uri_rows_or_columns_alone_keep_the_aspect_ratio(
    client: httpx.AsyncClient,
) -> None:
    await put(client, f"{SERIES}.17", RAMP[:16, :32].copy())
    for params, size in (
        ({"rows": "32"}, (64, 32)),
        ({"columns": "8"}, (8, 4)),
        ({"rows": "10", "columns": "10"}, (10, 5)),
    ):
        response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.17", **params))
        assert Image.open(io.BytesIO(response.content)).size == size, params
    for bad in ({"rows": "0"}, {"columns": "x"}, {"rows": ""}):
        response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.17", **bad))
        assert response.status_code == 400, bad


async def test_wado_uri_content_type_list(client: httpx.AsyncClient) -> None:
    await put(client, f"{SERIES}.18", RAMP)
    for content_type, served in (
        ("image/webp, image/png", "image/png"),
        ("image/png;q=0.2, image/gif", "image/gif"),
        ("text/html, application/dicom", "application/dicom"),
        ("*/*", "image/jpeg"),
    ):
        params = uri(f"{SERIES}.18", contentType=content_type)
        response = await client.get("/dicomweb/wado", params=params)
        assert response.status_code == 200, content_type
        assert response.headers["content-type"] == served, content_type
    refused = uri(f"{SERIES}.18", contentType="text/html, image/webp")
    assert (await client.get("/dicomweb/wado", params=refused)).status_code == 406


async def test_wado_uri_refuses_anonymize(client: httpx.AsyncClient) -> None:
    await put(client, f"{SERIES}.19", RAMP)
    for content_type in ("application/dicom", "image/jpeg"):
        params = uri(f"{SERIES}.19", anonymize="yes", contentType=content_type)
        response = await client.get("/dicomweb/wado", params=params)
        assert response.status_code == 400
        assert "anonymize" in response.json()["message"]
        assert b"Render^Test" not in response.content


async def test_wado_uri_window_and_quality(client: httpx.AsyncClient) -> None:
    await put(client, f"{SERIES}.20", RAMP, WindowCenter=40, WindowWidth=400)
    params = uri(f"{SERIES}.20", windowCenter="2500", windowWidth="1200", contentType="image/png")
    got = pixels_of(await client.get("/dicomweb/wado", params=params))
    assert close(got, linear(RAMP.astype(float), 2500, 1200))
    for bad in (
        {"windowCenter": "2500"},
        {"windowWidth": "1200"},
        {"windowCenter": "2500", "windowWidth": "0"},
        {"windowCenter": "x", "windowWidth": "10"},
        {"imageQuality": "0"},
    ):
        response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.20", **bad))
        assert response.status_code == 400, bad


async def test_an_output_too_large_to_make_is_refused(client: httpx.AsyncClient) -> None:
    """An enlarging viewport (or WADO-URI size) cannot ask for gigabytes of pixels."""
    await stow(client, make_instance(STUDY, SERIES, f"{SERIES}.40"))
    url = f"{INSTANCES}/{SERIES}.40/rendered"
    assert (await client.get(url, params={"viewport": "4096,4096"})).status_code == 200
    refused = await client.get(url, params={"viewport": "60000,60000"})
    assert refused.status_code == 400 and "4096" in refused.json()["message"]
    wado = uri(f"{SERIES}.40", rows="60000", columns="60000")
    assert (await client.get("/dicomweb/wado", params=wado)).status_code == 400


# Frames that would decode to more than the server decodes at once (``decode_limit``)

# a black 1024x1024 RLE frame: a 17 KB file, 1 MiB decoded, where half that may be
LARGE = f"{SERIES}.50"
LARGE_URL = f"{INSTANCES}/{LARGE}"
SMALL_URL = f"{INSTANCES}/{SERIES}.51"
LARGE_ROADS = [
    f"{LARGE_URL}/rendered",
    f"{LARGE_URL}/thumbnail",
    f"{LARGE_URL}/frames/1/rendered",
    f"{LARGE_URL}/frames/1/thumbnail",
    f"/dicomweb/studies/{STUDY}/series/{SERIES}/thumbnail",  # the middle instance: LARGE
    f"/dicomweb/studies/{STUDY}/rendered",
    f"/dicomweb/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={LARGE}",
]


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = fast_settings(tmp_path / "data", max_decoded_bytes=2**19)
    async with running(settings) as (_, client):
        await stow(
            client,
            # (one patient's: a study takes no other patient's instances)
            make_instance(STUDY, SERIES, f"{SERIES}.49", number=1, patient_id="PAT-RLE"),
            rle_instance(STUDY, SERIES, LARGE, side=1024, number=2),
            make_instance(STUDY, SERIES, f"{SERIES}.51", number=3, patient_id="PAT-RLE"),
        )
        yield client


@pytest.mark.parametrize("url", LARGE_ROADS)
async def test_a_frame_beyond_the_decode_limit_is_not_rendered(
    limited: httpx.AsyncClient, url: str
) -> None:
    response = await limited.get(url)
    assert response.status_code == 413, response.text
    assert "1,048,576 bytes" in response.json()["message"]
    assert "more than the 524,288" in response.headers["warning"]


async def test_frames_within_the_decode_limit_are_rendered(limited: httpx.AsyncClient) -> None:
    for path in ("rendered", "thumbnail", "frames/1/rendered"):
        response = await limited.get(f"{SMALL_URL}/{path}")
        assert response.status_code == 200 and response.content.startswith(b"\xff\xd8"), path


@pytest.mark.parametrize("viewport", [THUMBNAIL, None], ids=["thumbnail", "full-size"])
def test_rendering_holds_no_float_copy_of_the_frame(
    tmp_path: Path, viewport: Viewport | None
) -> None:
    """Windowing used to convert the whole frame to float64 several times over (17
    times its decoded size at peak for a 16-bit frame); it goes a band at a time."""
    ramp = (np.arange(2048 * 2048) % 4096).astype(np.uint16).reshape(2048, 2048)
    path = tmp_path / "large.dcm"
    path.write_bytes(dicom(f"{SERIES}.52", ramp, RescaleSlope=1, RescaleIntercept=-1024))
    options = RenderOptions("image/png", viewport=viewport)
    tracemalloc.start()
    try:
        render(path, 1, options, DEFAULT_MAX_DECODED_BYTES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the frame as decoded (pydicom reads it, then makes the array), the 8-bit output
    assert peak < 3 * ramp.nbytes, peak


async def test_a_reduced_thumbnail_is_the_image_scaled_down(client: httpx.AsyncClient) -> None:
    # 1024x768 is reduced by boxes of 2 before Lanczos: the result is what Lanczos alone
    # makes of the full-size rendering, give or take rounding
    y, x = np.mgrid[0:768, 0:1024]
    smooth = (2048 + 2000 * np.sin(x / 90) * np.cos(y / 70)).astype(np.uint16)
    url = await put(client, f"{SERIES}.53", smooth)
    full = Image.fromarray(pixels_of(await client.get(f"{url}/rendered", headers=PNG)))
    expected = np.asarray(full.resize((128, 96), Image.Resampling.LANCZOS)).astype(int)
    thumbnail = pixels_of(await client.get(f"{url}/thumbnail", headers=PNG))
    assert thumbnail.shape == (96, 128)
    assert np.abs(thumbnail - expected).max() <= 2
