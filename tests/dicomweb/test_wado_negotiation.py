"""WADO-RS content negotiation through the real ASGI stack: what is sent when pixel
data cannot be decoded, big endian files, Accept matching for frames and bulk
data, which values are bulk data, and the metadata's encodings and ETags."""

from __future__ import annotations

import base64
import gzip
import io
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from tests.dicomweb.archive_app import fast_settings, running
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, rle_instance

ELE = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
MPEG2 = "1.2.840.10008.1.2.4.100"
RLE = "1.2.840.10008.1.2.5"
DICOM = 'multipart/related; type="application/dicom"'
ANY_TS = f"{DICOM}; transfer-syntax=*"
CORNERSTONE = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTET = "application/octet-stream"
VIDEO = b"\x00\x00\x01\xb3not-really-an-mpeg2-stream"
OVERLAY = bytes(range(256)) * 8  # 2 KiB: above the 1 KiB bulk data threshold
# OVERLAY's 16-bit words, as a big endian file holds them, written little endian
OVERLAY_SWAPPED = np.frombuffer(OVERLAY, ">u2").astype("<u2").tobytes()


def uids_of(data: bytes) -> tuple[str, str, str]:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def url(data: bytes) -> str:
    study, series, sop = uids_of(data)
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def rewritten(data: bytes, **attrs: object) -> bytes:
    """``data`` with some attributes replaced, its encoding kept."""
    ds = dcmread(io.BytesIO(data))
    for name, value in attrs.items():
        setattr(ds, name, value)
    if "SOPInstanceUID" in attrs:
        ds.file_meta.MediaStorageSOPInstanceUID = attrs["SOPInstanceUID"]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def mpeg2_of(study: str, series: str, sop: str) -> bytes:
    """A video instance in a study: its stream cannot be decoded here."""
    ds = dcmread(io.BytesIO(make_instance(study, series, sop, number=2)))
    ds.file_meta.TransferSyntaxUID = UID(MPEG2)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = 3
    ds.PixelData = encapsulate([VIDEO])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_overlay(data: bytes, *, big_endian: bool = False) -> bytes:
    """``data`` with long and short Overlay Data (bulk data, inline) and a Referenced
    Image Sequence."""
    ds = dcmread(io.BytesIO(data))
    ds.add_new(0x60003000, "OW", OVERLAY)
    ds.add_new(0x60023000, "OW", OVERLAY[:64])  # below the threshold: inline
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.3.4.5"
    ds.ReferencedImageSequence = [ref]
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=not big_endian, enforce_file_format=True)
    return out.getvalue()


LOSSY = bundled("JPEG-lossy.dcm").read_bytes()  # 12-bit JPEG no installed decoder reads
LOSSY_STUDY, _, _ = uids_of(LOSSY)
LOSSY_PATIENT = str(dcmread(io.BytesIO(LOSSY), stop_before_pixels=True).PatientID)
# (an instance joins a study only under the study's patient)
CT = make_instance(
    LOSSY_STUDY, f"{LOSSY_STUDY}.7", f"{LOSSY_STUDY}.7.1", number=1, patient_id=LOSSY_PATIENT
)
VIDEO_STUDY = "1.2.826.0.1.3680043.10.9"
CT_OF_VIDEO = make_instance(VIDEO_STUDY, f"{VIDEO_STUDY}.1", f"{VIDEO_STUDY}.1.1")
MPEG = mpeg2_of(VIDEO_STUDY, f"{VIDEO_STUDY}.2", f"{VIDEO_STUDY}.2.1")
BIG_ENDIAN = with_overlay(bundled("MR_small_bigendian.dcm").read_bytes(), big_endian=True)
RLE_2 = bundled("SC_rgb_rle_2frame.dcm").read_bytes()
PLAIN = with_overlay(make_instance("1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.1", name="Audit^Wado"))


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> httpx.AsyncClient:
    body = multipart(LOSSY, CT, CT_OF_VIDEO, MPEG, BIG_ENDIAN, RLE_2, PLAIN)
    response = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return client


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Each part's headers (names lower-case) and body."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    found = []
    for piece in response.content.split(f"--{boundary}".encode())[1:-1]:
        head, body = piece.removeprefix(b"\r\n").split(b"\r\n\r\n", 1)
        fields = (line.split(":", 1) for line in head.decode("latin-1").split("\r\n"))
        found.append(({k.strip().lower(): v.strip() for k, v in fields}, body[:-2]))
    return found


def syntax_of(part: bytes) -> str:
    return str(dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID)


# 1. pixel data a decoder claims but cannot read


async def test_undecodable_instance_is_sent_as_stored_or_refused(
    stored: httpx.AsyncClient,
) -> None:
    response = await stored.get(url(LOSSY))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-type"].endswith(f"transfer-syntax={JPEG_EXTENDED}")
    ((headers, body),) = parts(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={JPEG_EXTENDED}"
    assert body == LOSSY
    explicit = await stored.get(url(LOSSY), headers={"Accept": f"{DICOM}; transfer-syntax={ELE}"})
    assert explicit.status_code == 406


async def test_study_with_an_undecodable_part_is_sent_whole(stored: httpx.AsyncClient) -> None:
    for accept in (None, f"{DICOM}; transfer-syntax={ELE}"):
        response = await stored.get(
            f"/dicomweb/studies/{LOSSY_STUDY}", headers={"Accept": accept} if accept else {}
        )
        assert response.status_code == 200
        assert "transfer-syntax" not in response.headers["content-type"]  # not one for all
        sent = parts(response)
        assert len(sent) == 2
        by_sop = {dcmread(io.BytesIO(b)).SOPInstanceUID: (h, b) for h, b in sent}
        headers, body = by_sop[uids_of(LOSSY)[2]]
        assert body == LOSSY  # the file as stored, labelled as such
        assert headers["content-type"].endswith(f"transfer-syntax={JPEG_EXTENDED}")
        headers, body = by_sop[uids_of(CT)[2]]
        assert headers["content-type"].endswith(f"transfer-syntax={ELE}")
        assert syntax_of(body) == ELE


async def test_wado_uri_sends_an_undecodable_instance_whole(stored: httpx.AsyncClient) -> None:
    study, series, sop = uids_of(LOSSY)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    response = await stored.get(
        "/dicomweb/wado", params={**params, "contentType": "application/dicom"}
    )
    assert response.status_code == 200
    assert response.content == LOSSY
    # asked for Explicit VR Little Endian, which cannot be made: 406, not a cut-off 200
    asked = {**params, "contentType": "application/dicom", "transferSyntax": ELE}
    assert (await stored.get("/dicomweb/wado", params=asked)).status_code == 406
    ct_study, ct_series, ct_sop = uids_of(CT)
    decodable = {**asked, "studyUID": ct_study, "seriesUID": ct_series, "objectUID": ct_sop}
    transcoded = await stored.get("/dicomweb/wado", params=decodable)
    assert transcoded.status_code == 200 and syntax_of(transcoded.content) == ELE


async def test_frames_of_an_undecodable_instance(stored: httpx.AsyncClient) -> None:
    (expected,) = generate_frames(dcmread(io.BytesIO(LOSSY)).PixelData, number_of_frames=1)
    octet = "multipart/related; type=application/octet-stream"
    for accept in (CORNERSTONE, octet, 'multipart/related; type="image/jpeg"'):
        response = await stored.get(f"{url(LOSSY)}/frames/1", headers={"Accept": accept})
        assert response.status_code == 200, accept
        ((headers, frame),) = parts(response)
        assert headers["content-type"] == f"image/jpeg; transfer-syntax={JPEG_EXTENDED}"
        assert frame == expected and frame.startswith(b"\xff\xd8")
    refused = await stored.get(
        f"{url(LOSSY)}/frames/1", headers={"Accept": f"{octet}; transfer-syntax={ELE}"}
    )
    assert refused.status_code == 406


# 2. Explicit VR Big Endian is never sent


async def test_big_endian_is_sent_as_explicit_little_endian(stored: httpx.AsyncClient) -> None:
    original = dcmread(bundled("MR_small.dcm"))
    for accept in (None, ANY_TS):
        response = await stored.get(url(BIG_ENDIAN), headers={"Accept": accept} if accept else {})
        ((headers, body),) = parts(response)
        assert headers["content-type"].endswith(f"transfer-syntax={ELE}")
        ds = dcmread(io.BytesIO(body))
        assert str(ds.file_meta.TransferSyntaxUID) == ELE
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert ds.PixelData == original.PixelData
        # the other OW values are turned round too: the same 16-bit words
        assert ds[0x60003000].value == OVERLAY_SWAPPED
    asked = await stored.get(url(BIG_ENDIAN), headers={"Accept": f"{DICOM}; transfer-syntax={BIG}"})
    assert asked.status_code == 406


async def test_big_endian_frames_and_bulk_data_are_little_endian(
    stored: httpx.AsyncClient,
) -> None:
    original = dcmread(bundled("MR_small.dcm")).PixelData
    frame = await stored.get(f"{url(BIG_ENDIAN)}/frames/1")
    assert [body for _, body in parts(frame)] == [original]
    bulk = await stored.get(f"{url(BIG_ENDIAN)}/bulkdata/7FE00010")
    ((headers, body),) = parts(bulk)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert body == original
    overlay = await stored.get(f"{url(BIG_ENDIAN)}/bulkdata/60003000")
    assert [body for _, body in parts(overlay)] == [OVERLAY_SWAPPED]


async def test_big_endian_inline_binary_is_the_bulk_data_octets(
    stored: httpx.AsyncClient,
) -> None:
    """A short OW value is inline, a long one bulk data: the same little endian words."""
    (meta,) = (await stored.get(f"{url(BIG_ENDIAN)}/metadata")).json()
    assert base64.b64decode(meta["60023000"]["InlineBinary"]) == OVERLAY_SWAPPED[:64]
    bulk = await stored.get(meta["60003000"]["BulkDataURI"])
    assert [body for _, body in parts(bulk)] == [OVERLAY_SWAPPED]


# 2b. a deflated instance: its pixel data is native, but only once inflated


async def _stowed(client: httpx.AsyncClient, *instances: bytes) -> None:
    response = await client.post(
        "/dicomweb/studies", content=multipart(*instances), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text


async def test_deflated_pixel_data_is_served_inflated(client: httpx.AsyncClient) -> None:
    deflated = bundled("image_dfl.dcm").read_bytes()
    # the same data set uncompressed, as another instance: what rendering must match
    same = dcmread(io.BytesIO(deflated))
    same.file_meta.TransferSyntaxUID = UID(ELE)
    same.SOPInstanceUID = same.file_meta.MediaStorageSOPInstanceUID = f"{same.SOPInstanceUID}.9"
    out = io.BytesIO()
    same.save_as(out, enforce_file_format=True)
    plain = out.getvalue()
    await _stowed(client, deflated, plain)
    (meta,) = (await client.get(f"{url(deflated)}/metadata")).json()
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"{url(deflated)}/bulkdata/7FE00010")
    for resource in ("frames/1", "bulkdata/7FE00010"):
        ((headers, body),) = parts(await client.get(f"{url(deflated)}/{resource}"))
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={ELE}"
        assert body == same.PixelData, resource
    assert (await client.get(f"{url(deflated)}/frames/2")).status_code == 404
    png = {"Accept": "image/png"}
    for resource in ("rendered", "thumbnail"):
        got = await client.get(f"{url(deflated)}/{resource}", headers=png)
        assert got.status_code == 200, got.text
        assert got.content == (await client.get(f"{url(plain)}/{resource}", headers=png)).content
    as_stored = await client.get(url(deflated), headers={"Accept": ANY_TS})
    assert [body for _, body in parts(as_stored)] == [deflated]


# 3. one instance that cannot be decoded does not block its study


async def test_study_with_a_video_is_served(stored: httpx.AsyncClient) -> None:
    study = f"/dicomweb/studies/{VIDEO_STUDY}"
    for accept in (
        None,
        "*/*",
        ANY_TS,
        f"{DICOM}; transfer-syntax={ELE}, {DICOM}; transfer-syntax={MPEG2}",
    ):
        response = await stored.get(study, headers={"Accept": accept} if accept else {})
        assert response.status_code == 200, accept
        syntaxes = sorted(syntax_of(body) for _, body in parts(response))
        assert syntaxes == sorted([ELE, MPEG2]), accept
    only_ele = await stored.get(study, headers={"Accept": f"{DICOM}; transfer-syntax={ELE}"})
    assert only_ele.status_code == 406
    video = await stored.get(f"{url(MPEG)}/bulkdata/7FE00010")
    ((headers, body),) = parts(video)
    assert headers["content-type"] == f"video/mpeg; transfer-syntax={MPEG2}"
    assert body.rstrip(b"\x00") == VIDEO
    # a video's stream is not cut into frames, and no decoder here makes frames of it
    assert (await stored.get(f"{url(MPEG)}/frames/1")).status_code == 406


# 4. frames and bulk data refuse media types they cannot be sent in


REFUSED = (
    "text/html",
    "image/jpeg",
    "application/dicom",
    'multipart/related; type="application/dicom"',
    "multipart/related; type=image/jls",
    f"multipart/related; type=application/octet-stream; transfer-syntax={RLE}",
)
SERVED = (
    None,
    "*/*",
    "multipart/related",
    f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}",
    CORNERSTONE,
    'Multipart/Related; Type="Application/Octet-Stream"',
    "application/octet-stream;q=0.5, */*",
)
# single-part only: one frame or one value goes as a bare body (PS3.18 Table 10.4.4-1)
SERVED_BARE = (
    "application/octet-stream",
    "text/html;q=0.9, application/octet-stream;q=0.1",
    f"application/octet-stream; transfer-syntax={ELE}",
    "application/*",
)


async def test_frames_and_bulk_data_refuse_what_they_cannot_be(stored: httpx.AsyncClient) -> None:
    for accept in REFUSED:
        for resource in ("frames/1", "bulkdata/7FE00010", "bulkdata/60003000"):
            response = await stored.get(f"{url(PLAIN)}/{resource}", headers={"Accept": accept})
            assert response.status_code == 406, (resource, accept)


async def test_frames_and_bulk_data_serve_octets(stored: httpx.AsyncClient) -> None:
    pixels = dcmread(io.BytesIO(PLAIN)).PixelData
    for accept in SERVED:
        for resource, expected in (
            ("frames/1", pixels),
            ("bulkdata/7FE00010", pixels),
            ("bulkdata/60003000", OVERLAY),
        ):
            response = await stored.get(
                f"{url(PLAIN)}/{resource}", headers={"Accept": accept} if accept else {}
            )
            assert response.status_code == 200, (resource, accept)
            assert [body for _, body in parts(response)] == [expected]
            assert response.headers["content-type"].startswith("multipart/related")
    for accept in SERVED_BARE:
        for resource, expected in (
            ("frames/1", pixels),
            ("bulkdata/7FE00010", pixels),
            ("bulkdata/60003000", OVERLAY),
        ):
            response = await stored.get(f"{url(PLAIN)}/{resource}", headers={"Accept": accept})
            assert response.status_code == 200, (resource, accept)
            assert response.headers["content-type"].startswith(OCTET), (resource, accept)
            assert response.content == expected, (resource, accept)


async def test_several_frames_single_part_only_is_406(stored: httpx.AsyncClient) -> None:
    """Several frames, or pixel data of several compressed frames, are several parts: a
    client that takes only a bare body cannot have them (PS3.18 §8.7.8.1)."""
    source = dcmread(io.BytesIO(RLE_2))
    for resource, accept in (
        ("frames/1,2", "application/octet-stream"),
        ("frames/1,2", f"image/dicom-rle; transfer-syntax={RLE}"),
        ("bulkdata/7FE00010", f"image/dicom-rle; transfer-syntax={RLE}"),
    ):
        response = await stored.get(f"{url(RLE_2)}/{resource}", headers={"Accept": accept})
        assert response.status_code == 406, (resource, accept)
    one = await stored.get(
        f"{url(RLE_2)}/frames/2", headers={"Accept": f"image/dicom-rle; transfer-syntax={RLE}"}
    )
    assert one.status_code == 200
    assert one.headers["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"
    assert one.content == list(generate_frames(source.PixelData, number_of_frames=2))[1]
    # whole decoded pixel data is one value
    whole = await stored.get(f"{url(RLE_2)}/bulkdata/7FE00010", headers={"Accept": OCTET})
    assert whole.status_code == 200
    assert whole.content == pixel_array(bundled("SC_rgb_rle_2frame.dcm"), raw=True).tobytes()
    # a multipart range besides: several frames go multipart
    both = await stored.get(
        f"{url(RLE_2)}/frames/1,2", headers={"Accept": f"{OCTET}, {CORNERSTONE};q=0.5"}
    )
    assert both.status_code == 200
    assert len(parts(both)) == 2


async def test_one_small_bulk_value_does_not_read_the_whole_instance(
    client: httpx.AsyncClient,
) -> None:
    ds = dcmread(io.BytesIO(with_overlay(make_instance("1.2.3.8", "1.2.3.8.1", "1.2.3.8.1.1"))))
    ds.Rows, ds.Columns = 2048, 2048  # 8 MiB of pixel data
    ds.PixelData = bytes(2048 * 2048 * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    large = out.getvalue()
    stored = await client.post(
        "/dicomweb/studies", content=multipart(large), headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    tracemalloc.start()
    try:
        overlay = await client.get(f"{url(large)}/bulkdata/60003000")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [body for _, body in parts(overlay)] == [OVERLAY]
    assert peak < 2 * 1024 * 1024  # it read the whole file: 8 MiB and more


# 5. compressed pixel data as bulk data


async def test_compressed_pixel_data_decoded_or_by_frame(stored: httpx.AsyncClient) -> None:
    path = bundled("SC_rgb_rle_2frame.dcm")
    decoded = await stored.get(f"{url(RLE_2)}/bulkdata/7FE00010")
    ((headers, body),) = parts(decoded)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert body == pixel_array(path, raw=True).tobytes()
    assert body != dcmread(path).PixelData  # not the encapsulated value
    rle = await stored.get(
        f"{url(RLE_2)}/bulkdata/7FE00010",
        headers={"Accept": "multipart/related; type=image/dicom-rle"},
    )
    assert rle.status_code == 200
    sent = parts(rle)
    assert [h["content-type"] for h, _ in sent] == [f"image/dicom-rle; transfer-syntax={RLE}"] * 2
    assert [b for _, b in sent] == list(
        generate_frames(dcmread(path).PixelData, number_of_frames=2)
    )
    refused = await stored.get(
        f"{url(RLE_2)}/bulkdata/7FE00010", headers={"Accept": "multipart/related; type=image/jp2"}
    )
    assert refused.status_code == 406


# 6. only what the metadata gives as a BulkDataURI is bulk data


async def test_bulk_data_is_only_what_metadata_names(stored: httpx.AsyncClient) -> None:
    (meta,) = (await stored.get(f"{url(PLAIN)}/metadata")).json()
    assert meta["60003000"]["BulkDataURI"].endswith("/bulkdata/60003000")
    assert "BulkDataURI" not in meta["00100010"]
    overlay = await stored.get(f"{url(PLAIN)}/bulkdata/60003000")
    assert [body for _, body in parts(overlay)] == [OVERLAY]
    for tag_path in ("00100010", "00081140", "00081140/0/00081155", "60003001", "zz"):
        response = await stored.get(f"{url(PLAIN)}/bulkdata/{tag_path}")
        assert response.status_code == 404, tag_path
        assert b"Audit" not in response.content


LONG_TEXT = "Befund: " + "é" * 35_000  # 70,008 bytes of UTF-8: pydicom defers it
NUMBERS = np.arange(10_000, dtype="<f8")  # 80,000 bytes of FD: implicit VR only
IMPLICIT = "1.2.840.10008.1.2"


def with_long_values(sop: str, syntax: str) -> bytes:
    """An instance in ``syntax`` with values pydicom defers when reading: a long
    text, a long sequence (pydicom writes it with a defined length) and, where
    the syntax has 4-byte lengths for it (implicit VR), a long FD value."""
    ds = dcmread(io.BytesIO(make_instance("1.2.3.6", "1.2.3.6.1", sop)))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SpecificCharacterSet, ds.TextValue = "ISO_IR 192", LONG_TEXT
    codes = [Dataset() for _ in range(1000)]
    for i, item in enumerate(codes):
        item.CodeValue, item.CodeMeaning = f"C{i}", "m" * 60
    ds.ConceptNameCodeSequence = codes
    if syntax == IMPLICIT:
        ds.add_new(0x00189089, "FD", NUMBERS.tolist())
    out = io.BytesIO()
    implicit, little = syntax == IMPLICIT, syntax != BIG
    dcmwrite(out, ds, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out.getvalue()


def bulk_data_uris(element: object) -> list[str]:
    """Every BulkDataURI in a DICOM JSON data set, its items' included."""
    if isinstance(element, list):
        return [uri for item in element for uri in bulk_data_uris(item)]
    if not isinstance(element, dict):
        return []
    found = [element["BulkDataURI"]] if "BulkDataURI" in element else []
    return found + [uri for value in element.values() for uri in bulk_data_uris(value)]


@pytest.mark.parametrize("syntax", [ELE, IMPLICIT, BIG])
async def test_every_bulk_data_uri_gives_the_value_as_stored(
    client: httpx.AsyncClient, syntax: str
) -> None:
    instance = with_long_values(f"1.2.3.6.1.{len(syntax)}", syntax)
    await _stowed(client, instance)
    (meta,) = (await client.get(f"{url(instance)}/metadata")).json()
    assert len(meta["0040A043"]["Value"]) == 1000  # a sequence is never bulk data
    uris = bulk_data_uris(meta)
    expected = {"0040A160", "7FE00010"} | ({"00189089"} if syntax == IMPLICIT else set())
    assert {uri.rsplit("/", 1)[1] for uri in uris} == expected
    for uri in uris:
        assert (await client.get(uri)).status_code == 200, uri
    text = await client.get(f"{url(instance)}/bulkdata/0040A160")
    assert [body for _, body in parts(text)] == [LONG_TEXT.encode()]  # even: no padding
    if syntax == IMPLICIT:
        numbers = await client.get(f"{url(instance)}/bulkdata/00189089")
        assert [body for _, body in parts(numbers)] == [NUMBERS.tobytes()]


# 7. media types are case-insensitive; single-part types for many instances


async def test_media_types_ignore_case(stored: httpx.AsyncClient) -> None:
    for accept in (
        'multipart/related; type="Application/DICOM"',
        "MULTIPART/RELATED; TYPE=application/dicom",
    ):
        response = await stored.get(url(PLAIN), headers={"Accept": accept})
        assert response.status_code == 200, accept
        assert syntax_of(parts(response)[0][1]) == ELE


async def test_single_part_dicom_is_for_one_instance(stored: httpx.AsyncClient) -> None:
    study, series, _ = uids_of(PLAIN)
    single = {"Accept": "application/dicom"}
    bare = await stored.get(url(PLAIN), headers=single)
    assert bare.status_code == 200  # the file itself, not a multipart body it cannot read
    assert bare.headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    assert bare.content == PLAIN and bare.headers["content-location"].endswith(url(PLAIN))
    as_stored = await stored.get(
        url(LOSSY), headers={"Accept": "application/dicom; transfer-syntax=*"}
    )
    assert as_stored.content == LOSSY
    multipart = await stored.get(url(PLAIN), headers={"Accept": f"{DICOM}, application/dicom"})
    assert multipart.headers["content-type"].startswith("multipart/related")
    assert (await stored.get(f"/dicomweb/studies/{study}", headers=single)).status_code == 406
    series_url = f"/dicomweb/studies/{study}/series/{series}"
    assert (await stored.get(series_url, headers=single)).status_code == 406
    either = {"Accept": f"application/dicom, {DICOM};q=0.5"}
    assert (await stored.get(series_url, headers=either)).status_code == 200


# 8. metadata: Accept-Encoding, ETags per representation, If-None-Match


async def test_metadata_encoding_and_etags(stored: httpx.AsyncClient) -> None:
    where = f"{url(PLAIN)}/metadata"
    plain = await stored.get(where, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in plain.headers
    async with stored.stream("GET", where, headers={"Accept-Encoding": "gzip"}) as zipped:
        assert zipped.headers["content-encoding"] == "gzip"
        assert gzip.decompress(b"".join([c async for c in zipped.aiter_raw()])) == plain.content
    etag, gz_etag = plain.headers["etag"], zipped.headers["etag"]
    assert etag.startswith('"') and gz_etag == etag[:-1] + '-gz"'
    assert "Accept-Encoding" in plain.headers["vary"]
    cases = [
        ("identity", etag, 304),
        ("identity", gz_etag, 200),
        ("gzip", gz_etag, 304),
        ("gzip", etag, 200),
        ("gzip", "*", 304),
        ("identity", f'"nope", W/{etag}', 304),
        ("identity", f'"nope", "{etag[1:-1]}x"', 200),
    ]
    for encoding, if_none_match, status in cases:
        response = await stored.get(
            where, headers={"Accept-Encoding": encoding, "If-None-Match": if_none_match}
        )
        assert response.status_code == status, (encoding, if_none_match)
        if status == 304:
            assert response.headers["etag"] == (gz_etag if encoding == "gzip" else etag)
    gone = await stored.get("/dicomweb/studies/9.9.9/metadata", headers={"If-None-Match": "*"})
    assert gone.status_code == 404


# 9. pixel data that would decode to more than the server decodes at once

# two black 1024x1024 RLE frames (a 35 KB file, 2 MiB decoded), where 1.5 MiB may be
# decoded at once: one frame may be, both not
LARGE = rle_instance("1.2.3.77", "1.2.3.77.1", "1.2.3.77.1.1", side=1024, frames=2)
LARGE_URL = url(LARGE)
SMALL = make_instance("1.2.3.77", "1.2.3.77.1", "1.2.3.77.1.2", number=2, patient_id="PAT-RLE")
FRAME = 1024 * 1024


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = fast_settings(tmp_path / "data", max_decoded_bytes=3 * FRAME // 2)
    async with running(settings) as (_, client):
        response = await client.post(
            "/dicomweb/studies",
            content=multipart(LARGE, SMALL),
            headers={"Content-Type": STOW_TYPE},
        )
        assert response.status_code == 200, response.text
        yield client


def told_to_ask_as_stored(response: httpx.Response) -> bool:
    """A 406 whose Warning and message say why, and how to have the data as stored."""
    warning = response.headers.get("warning", "")
    return (
        response.status_code == 406
        and "2,097,152 bytes" in response.json()["message"]
        and "transfer-syntax=*" in warning
        and warning.startswith("299 ")
    )


async def test_an_instance_beyond_the_decode_limit_is_sent_as_stored_or_406(
    limited: httpx.AsyncClient,
) -> None:
    assert told_to_ask_as_stored(await limited.get(LARGE_URL))
    single = {"Accept": "application/dicom"}
    assert told_to_ask_as_stored(await limited.get(LARGE_URL, headers=single))
    response = await limited.get(LARGE_URL, headers={"Accept": ANY_TS})
    ((headers, body),) = parts(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"
    assert body == LARGE


async def test_a_series_sends_the_part_beyond_the_decode_limit_as_stored(
    limited: httpx.AsyncClient,
) -> None:
    response = await limited.get("/dicomweb/studies/1.2.3.77/series/1.2.3.77.1")
    assert response.status_code == 200
    sent = {dcmread(io.BytesIO(b)).SOPInstanceUID: (h, b) for h, b in parts(response)}
    headers, body = sent["1.2.3.77.1.1"]
    assert body == LARGE and headers["content-type"].endswith(f"transfer-syntax={RLE}")
    assert syntax_of(sent["1.2.3.77.1.2"][1]) == ELE


UNCOMPRESSED = {
    "Accept": f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}"
}


async def test_frames_beyond_the_decode_limit_together(limited: httpx.AsyncClient) -> None:
    one = await limited.get(f"{LARGE_URL}/frames/2", headers=UNCOMPRESSED)
    ((headers, frame),) = parts(one)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert frame == bytes(FRAME)
    both = f"{LARGE_URL}/frames/1,2"
    assert told_to_ask_as_stored(await limited.get(both, headers=UNCOMPRESSED))
    # where the Accept header allows them, the frames as stored
    for accept in ({}, {"Accept": CORNERSTONE}):
        compressed = await limited.get(both, headers=accept)
        sent = parts(compressed)
        assert len(sent) == 2 and all(h["content-type"].endswith(RLE) for h, _ in sent)


async def test_pixel_data_beyond_the_decode_limit_as_bulk_data(
    limited: httpx.AsyncClient,
) -> None:
    bulk = f"{LARGE_URL}/bulkdata/7FE00010"
    assert told_to_ask_as_stored(await limited.get(bulk, headers=UNCOMPRESSED))
    compressed = await limited.get(bulk)
    sent = parts(compressed)
    assert [h["content-type"] for h, _ in sent] == [f"image/dicom-rle; transfer-syntax={RLE}"] * 2


async def test_wado_uri_beyond_the_decode_limit(limited: httpx.AsyncClient) -> None:
    study, series, sop = uids_of(LARGE)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    params["contentType"] = "application/dicom"
    assert told_to_ask_as_stored(await limited.get("/dicomweb/wado", params=params))
    whole = await limited.get("/dicomweb/wado", params={**params, "transferSyntax": "*"})
    assert whole.status_code == 200 and whole.content == LARGE


def test_fixture_files_are_what_the_tests_assume() -> None:
    """The bundled 12-bit JPEG defeats every installed decoder (the point of test 1)."""
    with pytest.raises(Exception, match="Unable to decode"):
        pixel_array(Path(bundled("JPEG-lossy.dcm")))


# 8. a q=0 range excludes what a wider range would admit (RFC 9110 §12.5.1)


async def test_a_q0_range_excludes_a_type_a_wildcard_admits(stored: httpx.AsyncClient) -> None:
    study = f"/dicomweb/studies/{uids_of(PLAIN)[0]}"
    refused = (
        (study, f"{DICOM};q=0, */*;q=0.1"),
        (url(PLAIN), f"{DICOM}; transfer-syntax={ELE};q=0, */*"),
        (f"{url(PLAIN)}/frames/1", "multipart/related; type=application/octet-stream;q=0, */*"),
        (
            f"{url(PLAIN)}/bulkdata/60003000",
            "multipart/related; type=application/octet-stream;q=0, */*",
        ),
        (f"{url(PLAIN)}/rendered", "image/jpeg;q=0, image/png;q=0, image/gif;q=0, */*"),
    )
    for path, accept in refused:
        response = await stored.get(path, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept)
    # excluding one form leaves the others a wildcard admits
    png = await stored.get(f"{url(PLAIN)}/rendered", headers={"Accept": "image/jpeg;q=0, */*"})
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    bare = await stored.get(
        f"{url(PLAIN)}/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream;q=0, application/*"},
    )
    assert bare.status_code == 200
    assert bare.headers["content-type"].startswith(OCTET)
    whole = await stored.get(study, headers={"Accept": f"application/dicom;q=0, {DICOM}"})
    assert whole.status_code == 200
    assert [syntax_of(body) for _, body in parts(whole)] == [ELE]
