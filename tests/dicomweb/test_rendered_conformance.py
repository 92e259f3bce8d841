"""Rendered studies, series and multi-frame instances as multipart/related, and the
rendering parameters that are applied, refused or warned about (PS3.18 §8.3.5,
§10.4.1.1.3, §8.2, §9), through the real ASGI stack."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from fhir_server.errors import ResponseBrokenOff
from tests.dicomweb.test_rendering import (
    INSTANCES,
    PNG,
    RAMP,
    SERIES,
    STUDY,
    Pixels,
    close,
    full_range,
    pixels_of,
    put,
    uri,
)

PNG_PARTS = {"Accept": 'multipart/related; type="image/png"'}
STUDY_URL = f"/dicomweb/studies/{STUDY}"
SERIES_URL = f"{STUDY_URL}/series/{SERIES}"


def parts_of(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Each part's headers and body, from a whole multipart/related response."""
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    body = response.content
    assert body.endswith(f"--{boundary}--\r\n".encode()), "no close delimiter"
    parts = []
    for piece in body.split(f"--{boundary}".encode())[1:-1]:
        head, _, data = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, data.removesuffix(b"\r\n")))
    return parts


def image(data: bytes) -> Pixels:
    return np.asarray(Image.open(io.BytesIO(data)))


async def multi_frame(client: httpx.AsyncClient, sop: str, number: int = 1) -> str:
    """Three different 64x64 frames."""
    frames = np.stack([RAMP, RAMP[::-1], RAMP.T])
    return await put(client, sop, frames, NumberOfFrames=3, InstanceNumber=number)


async def three_images(client: httpx.AsyncClient) -> None:
    """Two single-frame images and one of three frames, numbered in that order."""
    await put(client, f"{SERIES}.1", RAMP, InstanceNumber=1)
    await put(client, f"{SERIES}.2", RAMP[::-1].copy(), InstanceNumber=2)
    await multi_frame(client, f"{SERIES}.3", 3)


def expected_locations() -> list[str]:
    base = f"http://testserver/dicomweb{INSTANCES.removeprefix('/dicomweb')}"
    return [
        f"{base}/{SERIES}.1/rendered",
        f"{base}/{SERIES}.2/rendered",
        *(f"{base}/{SERIES}.3/frames/{n}/rendered" for n in (1, 2, 3)),
    ]


@pytest.mark.parametrize("url", [STUDY_URL, SERIES_URL])
async def test_a_rendered_study_or_series_is_every_image(
    client: httpx.AsyncClient, url: str
) -> None:
    await three_images(client)
    parts = parts_of(await client.get(f"{url}/rendered", headers=PNG_PARTS))
    assert [fields["Content-Type"] for fields, _ in parts] == ["image/png"] * 5
    locations = [fields["Content-Location"] for fields, _ in parts]
    assert [loc.split("/instances/")[1] for loc in locations] == [
        loc.split("/instances/")[1] for loc in expected_locations()
    ]
    # each part is the image its Content-Location renders
    for (_, data), location in zip(parts, locations, strict=True):
        path = "/dicomweb" + location.split("/dicomweb", 1)[1]
        alone = await client.get(path, headers=PNG)
        assert np.array_equal(image(data), pixels_of(alone)), location


async def test_a_rendered_study_defaults_to_jpeg_parts(client: httpx.AsyncClient) -> None:
    await three_images(client)
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "multipart/related"}):
        parts = parts_of(await client.get(f"{STUDY_URL}/rendered", headers=headers))
        assert len(parts) == 5 and all(d.startswith(b"\xff\xd8") for _, d in parts), headers
    by_query = await client.get(
        f"{STUDY_URL}/rendered", params={"accept": 'multipart/related; type="image/gif"'}
    )
    assert [image(d).shape for _, d in parts_of(by_query)][:2] == [(64, 64), (64, 64)]
    assert by_query.headers["content-type"].startswith('multipart/related; type="image/gif"')


@pytest.mark.parametrize("accept", ["image/jpeg", "image/png", "image/*", "image/jpeg, image/png"])
async def test_a_rendered_study_in_a_single_part_type_is_406(
    client: httpx.AsyncClient, accept: str
) -> None:
    """Even a study of one single-frame image (PS3.18 Table 10.4.4-1's note)."""
    await put(client, f"{SERIES}.1", RAMP)
    for url in (STUDY_URL, SERIES_URL):
        response = await client.get(f"{url}/rendered", headers={"Accept": accept})
        assert response.status_code == 406, (url, accept)
        assert "multipart/related" in response.json()["message"]


async def test_a_multi_frame_instance_as_parts_or_its_first_frame(
    client: httpx.AsyncClient,
) -> None:
    url = await multi_frame(client, f"{SERIES}.3")
    parts = parts_of(await client.get(f"{url}/rendered", headers=PNG_PARTS))
    frames = [
        pixels_of(await client.get(f"{url}/frames/{n}/rendered", headers=PNG)) for n in (1, 2, 3)
    ]
    assert len(parts) == 3
    assert all(np.array_equal(image(d), f) for (_, d), f in zip(parts, frames, strict=True))
    assert not np.array_equal(frames[0], frames[1])  # the frames differ: the order shows
    single = await client.get(f"{url}/rendered", headers=PNG)
    assert np.array_equal(pixels_of(single), frames[0])
    assert "only frame 1 of the 3 frames" in single.headers["warning"]
    # one frame asked for as parts: one part, no warning
    one = await client.get(f"{url}/frames/2/rendered", headers=PNG_PARTS)
    ((fields, data),) = parts_of(one)
    assert np.array_equal(image(data), frames[1]) and "warning" not in one.headers
    assert fields["Content-Location"].endswith(f"{SERIES}.3/frames/2/rendered")


async def test_a_single_frame_instance_has_no_warning(client: httpx.AsyncClient) -> None:
    url = await put(client, f"{SERIES}.1", RAMP)
    response = await client.get(f"{url}/rendered", headers=PNG)
    assert response.status_code == 200 and "warning" not in response.headers


async def test_instances_without_pixels_are_left_out_and_counted(
    client: httpx.AsyncClient,
) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    await put(client, f"{SERIES}.2", None)  # no Pixel Data
    response = await client.get(f"{STUDY_URL}/rendered", headers=PNG_PARTS)
    assert len(parts_of(response)) == 1
    assert "1 instances without pixel data" in response.headers["warning"]


async def test_a_part_that_fails_in_its_turn_breaks_the_response_off(
    client: httpx.AsyncClient,
) -> None:
    """The parts after the first are rendered as they are sent; one that cannot be is
    not left out silently under a 200: the body ends without its close delimiter."""
    await put(client, f"{SERIES}.1", RAMP, InstanceNumber=1)
    half = RAMP.astype("<u2").tobytes()[: RAMP.nbytes // 2]  # half the rows it declares
    await put(client, f"{SERIES}.2", RAMP, InstanceNumber=2, PixelData=half)
    assert (await client.get(f"{INSTANCES}/{SERIES}.2/rendered")).status_code == 404
    with pytest.raises(ResponseBrokenOff, match=f"{SERIES}.2"):
        await client.get(f"{STUDY_URL}/rendered", headers=PNG_PARTS)


async def test_thumbnails_stay_one_image(client: httpx.AsyncClient) -> None:
    await three_images(client)
    for url in (STUDY_URL, SERIES_URL):
        response = await client.get(f"{url}/thumbnail", headers=PNG)
        assert response.headers["content-type"] == "image/png"
        assert image(response.content).shape == (64, 64)  # the middle instance: 64x64


async def test_the_accept_parameter_keeps_its_plus(client: httpx.AsyncClient) -> None:
    """A ``+`` written into the URL stays a ``+`` (Starlette would read a space)."""
    url = await put(client, f"{SERIES}.1", RAMP)
    refused = await client.get(f"{url}/rendered?accept=image/svg+xml")
    assert refused.status_code == 406 and "image/svg+xml" in refused.json()["message"]
    thumb = await client.get(f"{url}/thumbnail?accept=image/svg+xml")
    assert thumb.status_code == 406 and "image/svg+xml" in thumb.json()["message"]
    chosen = await client.get(f"{url}/rendered?accept=image/svg+xml,+image/png;q=0.5")
    assert chosen.headers["content-type"] == "image/png"
    parts = await client.get(f"{STUDY_URL}/rendered?accept=multipart/related;+type=image/png")
    assert parts_of(parts)[0][0]["Content-Type"] == "image/png"


# The parameters a rendered answer does not apply: (query, status, warning or None)
RENDERED_PARAMETERS: list[tuple[dict[str, str], int, str | None]] = [
    ({"annotation": "patient"}, 200, "annotation=patient was not applied"),
    ({"annotation": "patient,technique"}, 200, "burns no annotations"),
    ({"annotation": "foo"}, 400, None),
    ({"annotation": "Patient"}, 400, None),  # keywords are case-sensitive
    ({"annotation": ""}, 400, None),
    ({"annotation": "patient,"}, 400, None),
    ({"iccprofile": "no"}, 200, None),
    ({"iccprofile": "yes"}, 200, "iccprofile=yes was not applied"),
    ({"iccprofile": "srgb"}, 200, "iccprofile=srgb was not applied"),
    ({"iccprofile": "adobergb"}, 200, "no ICC profile"),
    ({"iccprofile": "rommrgb"}, 200, "no ICC profile"),
    ({"iccprofile": "cmyk"}, 400, None),
    ({"iccprofile": ""}, 400, None),
]


@pytest.mark.parametrize(("params", "status", "warning"), RENDERED_PARAMETERS)
async def test_annotation_and_iccprofile_are_checked_and_never_silently_ignored(
    client: httpx.AsyncClient, params: dict[str, str], status: int, warning: str | None
) -> None:
    url = await put(client, f"{SERIES}.1", RAMP)
    for path in (f"{url}/rendered", f"{STUDY_URL}/rendered"):
        response = await client.get(path, params=params)
        assert response.status_code == status, (path, response.text)
        if status == 400:
            assert next(iter(params)) in response.json()["message"]
        elif warning is None:
            assert "warning" not in response.headers
        else:
            assert warning in response.headers["warning"]
            assert response.headers["warning"].startswith("299 ")


async def test_wado_uri_region_is_cut_from_the_image(client: httpx.AsyncClient) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    whole = full_range(RAMP.astype(float))  # the window is the whole frame's, cut or not
    params = uri(f"{SERIES}.1", region="0.25,0.25,0.75,0.5", contentType="image/png")
    got = pixels_of(await client.get("/dicomweb/wado", params=params))
    assert got.shape == (16, 32) and close(got, whole[16:32, 16:48])
    # rows/columns size the region, not the image
    sized = uri(f"{SERIES}.1", region="0,0,0.5,0.25", columns="64", contentType="image/png")
    assert pixels_of(await client.get("/dicomweb/wado", params=sized)).shape == (32, 64)
    full = uri(f"{SERIES}.1", region="0,0,1,1", contentType="image/png")
    assert close(pixels_of(await client.get("/dicomweb/wado", params=full)), whole)


@pytest.mark.parametrize(
    "region",
    [
        "0.1,0.1,0.5",
        "0.1,0.1,0.5,0.5,0.9",
        "0.5,0.1,0.5,0.6",
        "0.1,0.6,0.5,0.5",
        "-0.1,0,1,1",
        "0,0,1.5,1",
        "a,0,1,1",
        "nan,0,1,1",
        "",
    ],
)
async def test_an_ill_defined_region_is_400(client: httpx.AsyncClient, region: str) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.1", region=region))
    assert response.status_code == 400, region
    assert "region" in response.json()["message"]


@pytest.mark.parametrize("name", ["presentationUID", "presentationSeriesUID"])
async def test_wado_uri_presentation_states_are_refused(
    client: httpx.AsyncClient, name: str
) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    response = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.1", **{name: "1.2.3"}))
    assert response.status_code == 400
    assert "presentation states" in response.json()["message"]


async def test_wado_uri_annotation(client: httpx.AsyncClient) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    warned = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.1", annotation="technique"))
    assert warned.status_code == 200 and "burns no annotations" in warned.headers["warning"]
    bad = await client.get("/dicomweb/wado", params=uri(f"{SERIES}.1", annotation="all"))
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"rows": "64"},
        {"columns": "64"},
        {"region": "0,0,1,1"},
        {"windowCenter": "10", "windowWidth": "20"},
        {"imageQuality": "50"},
        {"presentationUID": "1.2.3"},
        {"presentationSeriesUID": "1.2.3"},
        {"annotation": "patient"},
    ],
)
async def test_rendering_parameters_with_application_dicom_are_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await put(client, f"{SERIES}.1", RAMP)
    query = uri(f"{SERIES}.1", contentType="application/dicom", **params)
    response = await client.get("/dicomweb/wado", params=query)
    assert response.status_code == 400, params
    assert next(iter(params)) in response.json()["message"]
    plain = uri(
        f"{SERIES}.1", contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1"
    )
    assert (await client.get("/dicomweb/wado", params=plain)).status_code == 200
