"""Transfer syntax table, Accept negotiation, and transcoding to Explicit VR LE."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, generate_uid

from dicomweb.decode_limit import DEFAULT_MAX_DECODED_BYTES as LIMIT
from dicomweb.decode_limit import DecodeTooLarge
from dicomweb.pixel_codec import (
    TranscodeError,
    compressed_frames,
    native_frames,
    native_pixel_data,
    transcode_to_explicit_le,
)
from dicomweb.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    TRANSFER_SYNTAXES,
    NotAcceptable,
    PixelChoice,
    PixelForm,
    acceptable,
    acceptable_syntaxes,
    can_decode,
    is_accepted,
    lookup,
    negotiate,
    parse_accept,
    pixel_choices,
    pixel_forms,
    prefers_bulkdata,
    prefers_single_part,
    weighted_values,
)
from tests.dicomweb.dicom_data import rle_instance

Sample = Callable[[str], Path]
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"
DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT = EXPLICIT_VR_LITTLE_ENDIAN


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
        (DICOM_ALL, EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN),
        ("*/*", EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN),
        # PS3.18 §8.7.3.4: lossy data no decoder reads goes as stored by default
        (None, MPEG2, MPEG2),
        ("application/dicom", MPEG2, MPEG2),
        ('multipart/related; type="Application/DICOM"', RLE, EXPLICIT_VR_LITTLE_ENDIAN),
        ("MULTIPART/RELATED; TYPE=application/dicom", RLE, EXPLICIT_VR_LITTLE_ENDIAN),
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
        (f"application/dicom; transfer-syntax={EXPLICIT_VR_BIG_ENDIAN}", EXPLICIT_VR_BIG_ENDIAN),
        (f"application/dicom; transfer-syntax={EXPLICIT_VR_BIG_ENDIAN}", EXPLICIT_VR_LITTLE_ENDIAN),
        (f"application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}", MPEG2),
        (f"application/dicom; transfer-syntax={JPEG2000}", JPEG2000_LOSSLESS),
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
    out = dcmread(io.BytesIO(transcode_to_explicit_le(sample(name), limit=LIMIT)))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert not out.original_encoding[0]  # explicit VR as written
    assert out.SOPInstanceUID == source.SOPInstanceUID
    expected = dcmread(sample(original)).pixel_array if original else source.pixel_array
    assert np.array_equal(out.pixel_array, expected)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "JPGExtended.dcm"])
def test_transcode_lossy_sources_decodes_pixels(sample: Sample, name: str) -> None:
    source = dcmread(sample(name))
    out = dcmread(io.BytesIO(transcode_to_explicit_le(sample(name).read_bytes(), limit=LIMIT)))
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
        transcode_to_explicit_le(_mpeg2_instance(), limit=LIMIT)


@pytest.mark.parametrize(
    ("accept", "stored", "served"),
    [
        (None, JPEG_BASELINE, (EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE)),
        (None, JPEG2000_LOSSLESS, (EXPLICIT_VR_LITTLE_ENDIAN,)),
        (None, MPEG2, (MPEG2,)),
        (DICOM_ALL, JPEG_BASELINE, (JPEG_BASELINE,)),
        (f"{DICOM_ALL}, application/dicom;q=0.5", JPEG_BASELINE, (JPEG_BASELINE, EXPLICIT)),
        (f"application/dicom;q=0.5, {DICOM_ALL}", JPEG2000_LOSSLESS, (JPEG2000_LOSSLESS, EXPLICIT)),
        ("text/html", EXPLICIT_VR_LITTLE_ENDIAN, ()),
    ],
)
def test_acceptable_syntaxes_best_first(
    accept: str | None, stored: str, served: tuple[str, ...]
) -> None:
    assert acceptable_syntaxes(accept, stored) == served


@pytest.mark.parametrize(
    ("accept", "served"),
    [
        ("application/dicom", False),
        ("application/*", False),
        ("*/*", True),
        ('multipart/related; type="application/dicom"', True),
        ("application/dicom, multipart/related; type=application/dicom;q=0.2", True),
    ],
)
def test_single_part_types_do_not_count_for_many_instances(accept: str, served: bool) -> None:
    assert negotiate(accept, EXPLICIT_VR_LITTLE_ENDIAN) == EXPLICIT_VR_LITTLE_ENDIAN
    assert bool(acceptable_syntaxes(accept, EXPLICIT_VR_LITTLE_ENDIAN, multi=True)) is served


NATIVE = PixelForm(OCTET_STREAM, EXPLICIT)
OCTETS = "multipart/related; type=application/octet-stream"


@pytest.mark.parametrize(
    ("accept", "stored", "forms"),
    [
        (None, EXPLICIT_VR_LITTLE_ENDIAN, [NATIVE]),
        (None, EXPLICIT_VR_BIG_ENDIAN, [NATIVE]),
        (None, JPEG_LS, [NATIVE, PixelForm("image/jls", JPEG_LS)]),
        (None, MPEG2, [PixelForm("video/mpeg", MPEG2)]),
        ("text/html", EXPLICIT_VR_LITTLE_ENDIAN, []),
        ("application/dicom", EXPLICIT_VR_LITTLE_ENDIAN, []),
        ("image/jpeg", EXPLICIT_VR_LITTLE_ENDIAN, []),
        ("multipart/related; type=image/webp", JPEG_BASELINE, []),
        ('multipart/related; type="Application/Octet-Stream"', EXPLICIT_VR_LITTLE_ENDIAN, [NATIVE]),
        (OCTETS, JPEG_LS, [NATIVE]),  # lossless: decoded, never sent compressed unasked
        (OCTETS, JPEG_BASELINE, [NATIVE, PixelForm("image/jpeg", JPEG_BASELINE)]),
        (f"{OCTETS}; transfer-syntax=*", JPEG_LS, [NATIVE, PixelForm("image/jls", JPEG_LS)]),
        (f"{OCTETS}; transfer-syntax={JPEG_LS}", JPEG_LS, [PixelForm("image/jls", JPEG_LS)]),
        (f"{OCTETS}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}", MPEG2, []),
        ("multipart/related; type=image/jls", JPEG_LS, [PixelForm("image/jls", JPEG_LS)]),
        ("multipart/related; type=image/jls", JPEG2000_LOSSLESS, []),
        ("image/*", RLE, [PixelForm("image/dicom-rle", RLE)]),
        (
            "multipart/related; type=image/jls;q=0.5, application/octet-stream",
            JPEG_LS,
            [NATIVE, PixelForm("image/jls", JPEG_LS)],
        ),
    ],
)
def test_pixel_forms(accept: str | None, stored: str, forms: list[PixelForm]) -> None:
    assert list(pixel_forms(accept, stored)) == forms


# (big endian sample, its little endian original): 16-bit OW, 32-bit multi-frame, 1-bit OB
BIG_ENDIAN_PAIRS = [
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("rtdose_expb.dcm", "rtdose.dcm"),
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
]


@pytest.mark.parametrize(("name", "original"), BIG_ENDIAN_PAIRS)
def test_big_endian_pixel_data_and_frames_are_little_endian(
    sample: Sample, name: str, original: str
) -> None:
    expected = dcmread(sample(original))
    assert native_pixel_data(sample(name), limit=LIMIT) == expected.PixelData
    count = int(expected.get("NumberOfFrames") or 1)
    size = len(expected.PixelData) // count
    last = native_frames(sample(name), [count - 1], limit=LIMIT)
    assert last == [expected.PixelData[(count - 1) * size : count * size]]


def test_transcoding_big_endian_turns_every_word_value_round(sample: Sample) -> None:
    ds = dcmread(sample("MR_small_bigendian.dcm"))
    words = np.arange(1000, 1512, dtype=">u2")
    ds.add_new(0x60003000, "OW", words.tobytes())
    ds.add_new(0x00281201, "OW", np.arange(256, dtype=">u2").tobytes())
    source = io.BytesIO()
    ds.save_as(source, implicit_vr=False, little_endian=False, enforce_file_format=True)
    out = dcmread(io.BytesIO(transcode_to_explicit_le(source.getvalue(), limit=LIMIT)))
    assert np.array_equal(np.frombuffer(out[0x60003000].value, "<u2"), words)
    assert np.array_equal(np.frombuffer(out.RedPaletteColorLookupTableData, "<u2"), np.arange(256))
    assert out.PixelData == dcmread(sample("MR_small.dcm")).PixelData


def test_undecodable_pixel_data_raises_transcode_error(sample: Sample) -> None:
    assert can_decode(str(dcmread(sample("JPEG-lossy.dcm")).file_meta.TransferSyntaxUID))
    with pytest.raises(TranscodeError):
        transcode_to_explicit_le(sample("JPEG-lossy.dcm"), limit=LIMIT)
    with pytest.raises(TranscodeError):
        native_frames(sample("JPEG-lossy.dcm"), [0], limit=LIMIT)
    with pytest.raises(TranscodeError):
        native_pixel_data(sample("JPEG-lossy.dcm"), limit=LIMIT)


def test_decoding_beyond_the_limit_is_refused_before_decoding(sample: Sample) -> None:
    # JPEG-lossy.dcm fails to decode: refused as too large, it was never decoded
    path = sample("JPEG-lossy.dcm")
    with pytest.raises(DecodeTooLarge):
        transcode_to_explicit_le(path, limit=1024)
    with pytest.raises(DecodeTooLarge):
        native_frames(path, [0], limit=1024)
    with pytest.raises(DecodeTooLarge):
        native_pixel_data(path, limit=1024)


def test_the_limit_counts_the_frames_decoded(sample: Sample) -> None:
    path = sample("SC_rgb_rle_2frame.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    frame = ds.Rows * ds.Columns * 3  # 8-bit RGB
    assert len(native_frames(path, [1], limit=frame)[0]) == frame
    with pytest.raises(DecodeTooLarge, match="2 frames"):
        native_frames(path, [0, 1], limit=2 * frame - 1)
    with pytest.raises(DecodeTooLarge, match="the instance"):
        transcode_to_explicit_le(path, limit=2 * frame - 1)
    with pytest.raises(DecodeTooLarge, match="the pixel data"):
        native_pixel_data(path, limit=2 * frame - 1)
    assert len(native_pixel_data(path, limit=2 * frame)) == 2 * frame
    assert transcode_to_explicit_le(path, limit=2 * frame)


def test_native_data_is_not_decoded_so_not_limited(sample: Sample) -> None:
    # big endian and little endian are only copied or swapped: their size is the file's
    little = dcmread(sample("MR_small.dcm")).PixelData
    assert native_pixel_data(sample("MR_small_bigendian.dcm"), limit=1) == little
    out = dcmread(io.BytesIO(transcode_to_explicit_le(sample("MR_small_bigendian.dcm"), limit=1)))
    assert out.PixelData == little


def test_compressed_frames_are_the_stored_bitstreams(sample: Sample, tmp_path: Path) -> None:
    value = dcmread(sample("SC_rgb_rle_2frame.dcm")).PixelData
    frames = compressed_frames(sample("SC_rgb_rle_2frame.dcm"), [1, 0])
    assert frames == list(reversed(list(generate_frames(value, number_of_frames=2))))
    video = tmp_path / "video.dcm"
    video.write_bytes(_mpeg2_instance())
    (stream,) = compressed_frames(video, [0])
    assert stream.startswith(b"\x00\x00\x01\xb3not-really-mpeg")


@pytest.mark.parametrize(
    ("accept", "single"),
    [
        ("application/dicom", True),
        ("APPLICATION/DICOM; transfer-syntax=*", True),
        ('multipart/related; type="application/dicom"', False),
        ("application/dicom, */*", True),
        ("*/*, application/dicom", False),
        ('application/dicom;q=0.5, multipart/related; type="application/dicom"', False),
        ("image/jpeg, application/dicom", True),  # the first range that names a file
        ("multipart/related; type=application/octet-stream, application/dicom", True),
        (None, False),
        ("", False),
    ],
)
def test_prefers_single_part(accept: str | None, single: bool) -> None:
    assert prefers_single_part(accept) is single


JSON = "application/dicom+json"
DICOM = 'multipart/related; type="application/dicom"'


@pytest.mark.parametrize(
    ("accept", "media_type", "params", "q"),
    [
        # RFC 9110 §12.5.1: the most specific range decides, a q=0 one excludes
        (f"{JSON};q=0, */*;q=0.1", JSON, {}, 0.0),
        (f"{JSON};q=0, */*;q=0.1", "application/json", {}, 0.1),
        (f"*/*;q=0.1, {JSON};q=0", JSON, {}, 0.0),
        (f"application/*;q=0, {JSON};q=0.4", JSON, {}, 0.4),
        ("application/*;q=0, */*", JSON, {}, 0.0),
        ("text/html", JSON, {}, 0.0),
        ("APPLICATION/DICOM+JSON;q=0.7", JSON, {}, 0.7),
        (
            f"{OCTETS};q=0, */*",
            "multipart/related",
            {"type": OCTET_STREAM, "transfer-syntax": EXPLICIT},
            0.0,
        ),
        (
            f"{OCTETS}; transfer-syntax={EXPLICIT};q=0, {OCTETS};q=0.3",
            "multipart/related",
            {"type": OCTET_STREAM, "transfer-syntax": JPEG_LS},
            0.3,
        ),
        (
            f"{OCTETS}; transfer-syntax=*;q=0.2, {OCTETS}; transfer-syntax={JPEG_LS};q=0",
            "multipart/related",
            {"type": OCTET_STREAM, "transfer-syntax": JPEG_LS},
            0.0,
        ),
        ("multipart/related; type=image/*;q=0.6", "multipart/related", {"type": "image/jls"}, 0.6),
        # a range with a parameter the representation lacks does not cover it
        (f"{JSON}; foo=bar", JSON, {}, 0.0),
    ],
)
def test_acceptable_is_the_most_specific_ranges_quality(
    accept: str, media_type: str, params: dict[str, str], q: float
) -> None:
    assert acceptable(weighted_values(accept), media_type, params) == q


@pytest.mark.parametrize(
    ("accept", "stored", "served"),
    [
        (f"{DICOM_ALL};q=0, */*", JPEG2000, ()),
        ('multipart/related; type="application/dicom";q=0, */*', EXPLICIT, ()),
        (
            f"{DICOM}; transfer-syntax={EXPLICIT};q=0, {DICOM_ALL}",
            JPEG_BASELINE,
            (JPEG_BASELINE,),
        ),
        (
            f"{DICOM}; transfer-syntax={EXPLICIT};q=0, */*",
            JPEG_BASELINE,
            (JPEG_BASELINE,),
        ),
        ("application/dicom;q=0, */*", EXPLICIT, (EXPLICIT,)),  # */* is sent multipart
    ],
)
def test_a_q0_range_excludes_what_a_wider_one_admits(
    accept: str, stored: str, served: tuple[str, ...]
) -> None:
    assert acceptable_syntaxes(accept, stored, multi=True) == served


@pytest.mark.parametrize(
    ("accept", "stored", "choices"),
    [
        (None, EXPLICIT, [PixelChoice(NATIVE, False)]),
        (OCTET_STREAM, EXPLICIT, [PixelChoice(NATIVE, True)]),
        (
            f"{OCTET_STREAM}, {OCTETS};q=0.5",
            EXPLICIT,
            [PixelChoice(NATIVE, True), PixelChoice(NATIVE, False)],
        ),
        ("image/*", RLE, [PixelChoice(PixelForm("image/dicom-rle", RLE), True)]),
        (f"{OCTETS};q=0, */*", EXPLICIT, []),
        (f"{OCTET_STREAM};q=0, */*", EXPLICIT, [PixelChoice(NATIVE, False)]),
        (
            f"image/jls;q=0, {OCTETS}; transfer-syntax=*",
            JPEG_LS,
            [PixelChoice(NATIVE, False), PixelChoice(PixelForm("image/jls", JPEG_LS), False)],
        ),
        (
            f"{OCTETS}; transfer-syntax={JPEG_LS};q=0, {OCTETS}; transfer-syntax=*",
            JPEG_LS,
            [PixelChoice(NATIVE, False)],
        ),
    ],
)
def test_pixel_choices(accept: str | None, stored: str, choices: list[PixelChoice]) -> None:
    assert list(pixel_choices(accept, stored)) == choices


@pytest.mark.parametrize(
    ("accept", "bulk"),
    [
        (None, False),
        ("*/*", False),
        (DICOM_ALL, False),
        ("multipart/related", False),
        (OCTETS, True),
        ('multipart/related; type="application/octet-stream"', True),
        ("multipart/related; type=image/jls", True),
        (f"{OCTETS};q=0.5, {DICOM_ALL}", False),
        (f"{DICOM_ALL};q=0, {OCTETS}", True),
        (f"application/dicom, {OCTETS}", True),  # single-part ranges do not decide
        ("application/octet-stream", False),
    ],
)
def test_prefers_bulkdata(accept: str | None, bulk: bool) -> None:
    assert prefers_bulkdata(accept) is bulk


@pytest.mark.parametrize("header", [";", " ; ;", ",;,"])
def test_an_accept_of_separators_alone_names_nothing(header: str) -> None:
    assert weighted_values(header) == ()


def test_a_compressed_frame_is_read_without_the_rest_of_the_pixel_data(tmp_path: Path) -> None:
    """Frame 250 of a 300-frame object (~19 MB) is found by its item headers and read
    alone: the whole Pixel Data never comes into memory."""
    source = tmp_path / "multiframe.dcm"
    source.write_bytes(rle_instance("1.2", "1.2.1", "1.2.1.1", side=2048, frames=300))
    whole = source.stat().st_size
    tracemalloc.start()
    try:
        (frame,) = compressed_frames(source, [249])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frame) == 64 + 2 * 16 * 2048  # the RLE header and its one segment
    assert whole > 18 * 2**20 and peak < 2 * 2**20
    with pytest.raises(TranscodeError):
        compressed_frames(source, [300])  # beyond the last frame
