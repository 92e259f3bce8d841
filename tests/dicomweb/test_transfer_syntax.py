"""Transfer syntax table, Accept negotiation, and transcoding to Explicit VR LE."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from dicomweb.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    NotAcceptable,
    TranscodeError,
    can_decode,
    is_accepted,
    lookup,
    negotiate,
    parse_accept,
    transcode_to_explicit_le,
)

Sample = Callable[[str], Path]
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"
DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def test_table_rows_are_unique_and_match_pydicom() -> None:
    uids = [ts.uid for ts in TRANSFER_SYNTAXES]
    assert len(uids) == len(set(uids))
    for ts in TRANSFER_SYNTAXES:
        known = UID(ts.uid)
        assert known.is_transfer_syntax, ts.uid
        assert ts.encapsulated == known.is_encapsulated, ts.uid


@pytest.mark.parametrize(
    ("uid", "accepted"),
    [(IMPLICIT_VR_LITTLE_ENDIAN, True), (JPEG2000, True), (MPEG2, True), ("1.2.3.4", False)],
)
def test_is_accepted(uid: str, accepted: bool) -> None:
    assert is_accepted(uid) is accepted
    assert (lookup(uid) is not None) is accepted


@pytest.mark.parametrize(
    ("uid", "decodable"),
    [
        (EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.2", True),
        (JPEG_BASELINE, True),
        (JPEG2000, True),
        (RLE, True),
        ("1.2.840.10008.1.2.4.80", True),
        (MPEG2, False),
        ("1.2.3.4", False),
    ],
)
def test_can_decode(uid: str, decodable: bool) -> None:
    assert can_decode(uid) is decodable


def test_parse_accept_orders_by_quality_and_unquotes() -> None:
    ranges = parse_accept(
        'application/json;q=0.2, multipart/related; type="application/dicom"; '
        "transfer-syntax=1.2.840.10008.1.2.4.50, */*;q=0"
    )
    assert [r.media_type for r in ranges] == ["multipart/related", "application/json"]
    assert ranges[0].param("type") == "application/dicom"
    assert ranges[0].param("transfer-syntax") == JPEG_BASELINE
    assert ranges[1].q == 0.2


@pytest.mark.parametrize(
    ("accept", "stored", "served"),
    [
        (None, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN),
        (None, JPEG2000, EXPLICIT_VR_LITTLE_ENDIAN),
        ("*/*", IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN),
        (DICOM_ALL, JPEG2000, JPEG2000),
        (DICOM_ALL, MPEG2, MPEG2),
        (DICOM_ALL, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN),
        ("application/dicom", RLE, EXPLICIT_VR_LITTLE_ENDIAN),
        (f"application/dicom; transfer-syntax={JPEG_BASELINE}", JPEG_BASELINE, JPEG_BASELINE),
        (
            f"application/dicom; transfer-syntax={JPEG2000}, application/dicom;q=0.5",
            RLE,
            EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        ("application/octet-stream, application/dicom;q=0.1", JPEG2000, EXPLICIT_VR_LITTLE_ENDIAN),
        ("multipart/related", JPEG2000, EXPLICIT_VR_LITTLE_ENDIAN),
    ],
)
def test_negotiate_serves(accept: str | None, stored: str, served: str) -> None:
    assert negotiate(accept, stored) == served


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        (
            f"application/dicom; transfer-syntax={IMPLICIT_VR_LITTLE_ENDIAN}",
            EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        (f"application/dicom; transfer-syntax={JPEG_BASELINE}", EXPLICIT_VR_LITTLE_ENDIAN),
        ("application/dicom", MPEG2),
        ("application/dicom+json", EXPLICIT_VR_LITTLE_ENDIAN),
        ('multipart/related; type="application/octet-stream"', EXPLICIT_VR_LITTLE_ENDIAN),
        ("application/dicom;q=0", EXPLICIT_VR_LITTLE_ENDIAN),
    ],
)
def test_negotiate_refuses(accept: str, stored: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept, stored)


# (compressed or otherwise re-encoded sample, its Explicit VR LE original)
LOSSLESS_PAIRS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ("SC_rgb_rle_2frame.dcm", None),
    ("SC_rgb_rle_16bit_2frame.dcm", None),
    ("image_dfl.dcm", None),
]


@pytest.mark.parametrize(("name", "original"), LOSSLESS_PAIRS)
def test_transcode_is_explicit_le_and_lossless(
    sample: Sample, name: str, original: str | None
) -> None:
    source = dcmread(sample(name))
    out = dcmread(io.BytesIO(transcode_to_explicit_le(sample(name))))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert not out.original_encoding[0]  # explicit VR as written
    assert out.SOPInstanceUID == source.SOPInstanceUID
    expected = dcmread(sample(original)).pixel_array if original else source.pixel_array
    assert np.array_equal(out.pixel_array, expected)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "JPGExtended.dcm"])
def test_transcode_lossy_sources_decodes_pixels(sample: Sample, name: str) -> None:
    source = dcmread(sample(name))
    out = dcmread(io.BytesIO(transcode_to_explicit_le(sample(name).read_bytes())))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert out.SOPInstanceUID == source.SOPInstanceUID
    assert out.pixel_array.shape == source.pixel_array.shape
    assert len(out.PixelData) == out.pixel_array.nbytes


def _mpeg2_instance() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 2, 8, 1
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3not-really-mpeg"])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(MPEG2)
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_transcode_refuses_what_it_cannot_decode() -> None:
    with pytest.raises(TranscodeError, match="no decoder"):
        transcode_to_explicit_le(_mpeg2_instance())
