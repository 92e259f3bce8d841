"""parse_instance: header fields, pixel data location, and rejection reasons."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomweb import ingest_parse
from dicomweb.ingest_parse import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    FAILURE_REASONS,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    InstanceRejected,
    PixelDataLocation,
    parse_instance,
)

Sample = Callable[[str], Path]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_failure_reason_table_is_ps3_18_table_i_2_2() -> None:
    assert FAILURE_REASONS[0xA700] == "Refused out of Resources"
    assert FAILURE_REASONS[0xA900] == "Error: Data Set does not match SOP Class"
    assert FAILURE_REASONS[0xC000] == "Error: Cannot understand"
    assert FAILURE_REASONS[0xC122] == "Referenced Transfer Syntax not supported"
    assert FAILURE_REASONS[0x0110] == "Processing failure"
    assert FAILURE_REASONS[0x0122] == "Referenced SOP Class not supported"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "CT_small.dcm",
            {
                "patient_name": "CompressedSamples^CT1",
                "patient_id": "1CT1",
                "patient_sex": "O",
                "patient_birth_date": None,
                "modality": "CT",
                "study_date": "20040119",
                "study_time": "072730",
                "sop_class_uid": CT_IMAGE,
                "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "rows": 128,
                "columns": 128,
                "number_of_frames": None,
                "series_number": 1,
                "instance_number": 1,
                "accession_number": None,
            },
        ),
        (
            "MR_small_implicit.dcm",
            {"patient_id": "4MR1", "modality": "MR", "sop_class_uid": MR_IMAGE, "rows": 64},
        ),
        (
            "SC_rgb_rle_2frame.dcm",
            {"patient_name": "Lestrade^G", "number_of_frames": 2, "samples_per_pixel": 3},
        ),
        ("JPEG2000.dcm", {"transfer_syntax_uid": "1.2.840.10008.1.2.4.91"}),
    ],
)
def test_header_fields(sample: Sample, name: str, expected: dict[str, object]) -> None:
    header = parse_instance(sample(name)).header
    assert {key: getattr(header, key) for key in expected} == expected


ACCEPTED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_ybr_color.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_header_agrees_with_a_full_read(sample: Sample, name: str) -> None:
    full = dcmread(sample(name))
    parsed = parse_instance(sample(name).read_bytes())
    header = parsed.header
    assert header.sop_instance_uid == full.SOPInstanceUID
    assert header.series_instance_uid == full.SeriesInstanceUID
    assert header.modality == (full.get("Modality") or None)
    assert header.patient_name == (str(full.PatientName) if full.get("PatientName") else None)
    assert parsed.size == sample(name).stat().st_size
    assert "PixelData" not in parsed.dataset
    assert parsed == parse_instance(sample(name))  # a path gives the same result as bytes


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"])
def test_native_pixel_data_location(sample: Sample, name: str) -> None:
    data = sample(name).read_bytes()
    location = parse_instance(data).pixel_data
    assert location is not None and location.length is not None
    assert location.tag == 0x7FE00010
    pixels = dcmread(io.BytesIO(data)).PixelData
    assert data[location.offset : location.offset + location.length] == pixels


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"])
def test_encapsulated_pixel_data_location(sample: Sample, name: str) -> None:
    data = sample(name).read_bytes()
    location = parse_instance(data).pixel_data
    assert location is not None
    assert location.length is None and location.vr == "OB"
    assert data[location.offset : location.offset + 4] == b"\xfe\xff\x00\xe0"  # first item


def test_no_pixel_location_without_pixel_data(sample: Sample) -> None:
    assert parse_instance(sample("rtplan.dcm")).pixel_data is None


def test_deflated_pixel_data_is_found_without_an_offset(sample: Sample) -> None:
    # its offset in the inflated data set is no offset in the stored (deflated) file
    location = parse_instance(sample("image_dfl.dcm")).pixel_data
    pixels = dcmread(sample("image_dfl.dcm")).PixelData
    assert location == PixelDataLocation(0x7FE00010, "OB", None, len(pixels))


def _redeflated(data: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """A deflated file whose inflated data set is ``change``d, deflated again."""
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]  # after (0002,0000)'s value
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return data[:meta_end] + packer.compress(change(body)) + packer.flush()


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda data: data[: len(data) // 2], "cannot parse instance"),  # does not inflate
        (
            lambda data: _redeflated(data, lambda body: body[:-100]),
            "truncated inside the pixel data",
        ),
    ],
    ids=["deflate-stream-cut", "inflated-data-set-cut"],
)
def test_truncated_deflated_files_are_rejected(
    sample: Sample, cut: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(InstanceRejected, match=message) as caught:
        parse_instance(cut(sample("image_dfl.dcm").read_bytes()))
    assert caught.value.reason == CANNOT_UNDERSTAND


def test_deflated_file_with_a_deferred_value_is_complete(sample: Sample) -> None:
    """A value pydicom defers lies in the inflated data set, not the file."""
    ds = dcmread(sample("image_dfl.dcm"))
    ds.EncapsulatedDocument = b"\x01" * 100_000
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    assert len(out.getvalue()) < 100_000  # deflated
    parsed = parse_instance(out.getvalue(), defer_size=1024)
    assert parsed.pixel_data is not None and parsed.pixel_data.length == len(ds.PixelData)


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deflated file inflating beyond MAX_INFLATED_SIZE is refused (0xC000) without
    being read whole: 3 MB of zeros deflate to 3 KB; the limit is lowered to 1 MB."""
    monkeypatch.setattr(ingest_parse, "MAX_INFLATED_SIZE", 1 << 20)
    bomb = _redeflated(
        sample("image_dfl.dcm").read_bytes(),
        lambda body: body + b"\xfe\xff\xfe\xff" + b"\x00" * (3 << 20),  # a long padding tail
    )
    assert len(bomb) < 100_000
    reads: list[int] = []
    monkeypatch.setattr(ingest_parse, "dcmread", lambda *a, **k: reads.append(1))
    with pytest.raises(InstanceRejected, match="inflates beyond 1,048,576 bytes") as caught:
        parse_instance(bomb)
    assert caught.value.reason == CANNOT_UNDERSTAND and reads == []
    monkeypatch.undo()
    parse_instance(sample("image_dfl.dcm"))  # one below the limit is read as before


def _rewritten(sample: Sample, name: str, change: Callable[[Dataset], None]) -> bytes:
    ds = dcmread(sample(name))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    change(ds)
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (_delete("StudyInstanceUID"), CANNOT_UNDERSTAND, "missing StudyInstanceUID"),
        (_delete("SeriesInstanceUID"), CANNOT_UNDERSTAND, "missing SeriesInstanceUID"),
        (_delete("SOPInstanceUID"), CANNOT_UNDERSTAND, "missing SOPInstanceUID"),
        (_delete("SOPClassUID"), CANNOT_UNDERSTAND, "missing SOPClassUID"),
        (_delete("PixelData"), DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "image without pixel data"),
        (_set("SOPInstanceUID", ""), CANNOT_UNDERSTAND, "missing SOPInstanceUID"),
        (_set("StudyInstanceUID", "1.2.x"), CANNOT_UNDERSTAND, "invalid StudyInstanceUID"),
        (
            _set("SeriesInstanceUID", "1." * 40 + "1"),
            CANNOT_UNDERSTAND,
            "invalid SeriesInstanceUID",
        ),
        (
            lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4"),
            TRANSFER_SYNTAX_NOT_SUPPORTED,
            "1.2.3.4",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length")
def test_rejected_instances(
    sample: Sample, change: Callable[[Dataset], None], reason: int, message: str
) -> None:
    with pytest.raises(InstanceRejected, match=message) as caught:
        parse_instance(_rewritten(sample, "CT_small.dcm", change))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_meta.dcm", "not a DICOM Part-10 file"),
        ("rtstruct.dcm", "not a DICOM Part-10 file"),
        ("JPEGLSNearLossless_08.dcm", "missing StudyInstanceUID"),
        ("MR_truncated.dcm", "truncated inside the pixel data"),
        ("rtplan_truncated.dcm", "truncated in element 300A00B0"),
        ("UN_sequence.dcm", "missing StudyInstanceUID"),
    ],
)
def test_rejected_samples(sample: Sample, name: str, message: str) -> None:
    with pytest.raises(InstanceRejected, match=message) as caught:
        parse_instance(sample(name))
    assert caught.value.reason == CANNOT_UNDERSTAND


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, b"\x00" * 128 + b"DICM"],
)
def test_non_dicom_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(data)
    assert caught.value.reason == CANNOT_UNDERSTAND


@pytest.mark.parametrize("keep", [0.01, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"])
def test_truncated_files_are_rejected(sample: Sample, name: str, keep: float) -> None:
    data = sample(name).read_bytes()
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(data[: int(len(data) * keep)])
    assert caught.value.reason == CANNOT_UNDERSTAND


def test_truncation_inside_a_deferred_value_is_caught(sample: Sample) -> None:
    data = _rewritten(sample, "rtplan.dcm", _set("EncapsulatedDocument", b"\x01" * 100_000))
    assert parse_instance(data, defer_size=1024).header.sop_class_uid
    with pytest.raises(InstanceRejected, match="truncated inside a large value"):
        parse_instance(data[: data.index(b"\x01" * 1000) + 50_000], defer_size=1024)


def test_sop_class_allow_list(sample: Sample) -> None:
    assert parse_instance(sample("CT_small.dcm"), sop_classes={CT_IMAGE}).header
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(sample("MR_small.dcm"), sop_classes={CT_IMAGE})
    assert caught.value.reason == SOP_CLASS_NOT_SUPPORTED
