"""DICOM JSON (PS3.18 F.2): pydicom as oracle, bulk data URIs, PN groups, round trips."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomweb.dicom_json import (
    format_tag_path,
    from_dicom_json,
    instance_uri_prefix,
    parse_tag_path,
    to_dicom_json,
)
from dicomweb.ingest_parse import parse_instance

Sample = Callable[[str], Path]
PREFIX = "https://pacs.test/dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4"

# Files pydicom reads without warnings (filterwarnings = error).
CLEAN = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_overlay.dcm",
    "examples_ybr_color.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "waveform_ecg.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
]


def _pydicom_normalised(ds: Dataset) -> Any:
    """pydicom's own JSON, brought to PS3.18 F.2.5: empty values are null, empty SQ has no Value."""

    def fix(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {k: fix(v) for k, v in obj.items() if not k.endswith("0000")}
            if out.get("Value") == []:
                del out["Value"]
            return out
        if isinstance(obj, list):
            return [None if v == "" else fix(v) for v in obj]
        return obj

    return fix(ds.to_json_dict(bulk_data_threshold=10**9))


# pydicom's JSON keeps a big endian file's binary values in its byte order
@pytest.mark.parametrize("name", [n for n in CLEAN if n != "MR_small_bigendian.dcm"])
def test_inline_json_agrees_with_pydicom(sample: Sample, name: str) -> None:
    ds = dcmread(sample(name))
    assert to_dicom_json(ds) == _pydicom_normalised(ds)


def test_big_endian_json_is_its_little_endian_twins(sample: Sample) -> None:
    """MR_small.dcm is MR_small_bigendian.dcm in little endian, with trailing padding
    added: the same JSON, its inline OW pixel data included."""
    big = to_dicom_json(dcmread(sample("MR_small_bigendian.dcm")))
    little = to_dicom_json(dcmread(sample("MR_small.dcm")))
    del little["FFFCFFFC"]  # Data Set Trailing Padding
    assert "InlineBinary" in little["7FE00010"]
    assert big == little


def test_inline_binary_of_a_big_endian_file_is_little_endian() -> None:
    """InlineBinary holds the octets the value's bulk data would be: little endian,
    swapped by the VR's width (PS3.5 §7.3)."""
    stored = bytes(range(16))
    ds = Dataset()
    for tag, vr in ((0x00660023, "OW"), (0x00660016, "OF"), (0x00660040, "OL")):
        ds.add_new(tag, vr, stored)
    ds.add_new(0x00701A05, "OD", stored)
    ds.add_new(0x00420011, "OB", stored)
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.2")
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=False)
    out = to_dicom_json(dcmread(buffer, force=True), bulk_uri_prefix=PREFIX)
    widths = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OB": 1}
    for element in out.values():
        width = widths[element["vr"]]
        little = np.frombuffer(stored, f">u{width}").astype(f"<u{width}").tobytes()
        assert base64.b64decode(element["InlineBinary"]) == little, element["vr"]


@pytest.mark.parametrize("name", CLEAN)
def test_round_trip_through_json(sample: Sample, name: str) -> None:
    first = to_dicom_json(dcmread(sample(name)))
    assert to_dicom_json(from_dicom_json(first)) == first


def test_pixel_data_and_large_values_become_bulk_data_uris(sample: Sample) -> None:
    ds = dcmread(sample("examples_overlay.dcm"))
    out = to_dicom_json(ds, bulk_uri_prefix=PREFIX, threshold=64)
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{PREFIX}/bulkdata/7FE00010"}
    assert out["60003000"]["BulkDataURI"] == f"{PREFIX}/bulkdata/60003000"  # overlay, > 64 B
    assert "InlineBinary" not in str(out) or all(
        len(base64.b64decode(v["InlineBinary"])) <= 64 for v in out.values() if "InlineBinary" in v
    )
    assert list(out) == sorted(out)


def test_small_binary_stays_inline_and_pixel_data_never_does() -> None:
    ds = Dataset()
    ds.PixelData = b"\x00\x01"
    ds["PixelData"].VR = "OB"
    ds.IconImageSequence = [Dataset()]
    ds.IconImageSequence[0].PixelData = b"\x02" * 10
    ds.IconImageSequence[0]["PixelData"].VR = "OB"
    out = to_dicom_json(ds, bulk_uri_prefix=PREFIX, threshold=8)
    assert out["7FE00010"]["BulkDataURI"] == f"{PREFIX}/bulkdata/7FE00010"
    icon = out["00880200"]["Value"][0]["7FE00010"]
    assert icon == {"vr": "OB", "BulkDataURI": f"{PREFIX}/bulkdata/00880200/0/7FE00010"}
    assert to_dicom_json(ds)["7FE00010"] == {"vr": "OB", "InlineBinary": "AAE="}


def test_person_name_groups_and_value_types() -> None:
    ds = Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ReferringPhysicianName = "=Ideo^Only"
    ds.OtherPatientNames = ["Smith^John", ""]
    ds.add_new(0x00200013, "IS", "7")
    ds.add_new(0x00281050, "DS", ["40.5", "80"])
    ds.add_new(0x00189087, "FD", math.nan)
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00080008, "CS", ["ORIGINAL", "", "AXIAL"])
    ds.add_new(0x00081030, "LO", "")
    out = to_dicom_json(ds)
    assert out["00100010"] == {
        "vr": "PN",
        "Value": [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ],
    }
    assert out["00080090"]["Value"] == [{"Ideographic": "Ideo^Only"}]
    assert out["00101001"]["Value"] == [{"Alphabetic": "Smith^John"}, None]
    assert out["00200013"]["Value"] == [7]
    assert out["00281050"]["Value"] == [40.5, 80.0]
    assert out["00189087"]["Value"] == [None]
    assert out["00209165"]["Value"] == ["00100010", "7FE00010"]
    assert out["00080008"]["Value"] == ["ORIGINAL", None, "AXIAL"]
    assert out["00081030"] == {"vr": "LO"}


@pytest.mark.parametrize(
    ("vr", "value", "json_value"),
    [
        ("UV", 2**53 - 1, 2**53 - 1),
        ("UV", 2**53, "9007199254740992"),
        ("UV", 2**64 - 1, "18446744073709551615"),
        ("SV", -(2**53) + 1, -(2**53) + 1),
        ("SV", -(2**63), "-9223372036854775808"),
        ("UL", 2**32 - 1, 2**32 - 1),
    ],
)
def test_a_64_bit_integer_beyond_what_json_holds_exactly_is_a_string(
    vr: str, value: int, json_value: int | str
) -> None:
    """PS3.18 §F.2.3.1: a reader parsing JSON numbers as doubles would round it (and
    MongoDB holds no unsigned integer above 2^63 - 1). Both ingest roads agree."""
    tag = {"SV": 0x00720082, "UV": 0x00720083, "UL": 0x00720084}[vr]  # Selector..Value
    ds = Dataset()
    ds.add_new(tag, vr, value)
    assert to_dicom_json(ds)[f"{tag:08X}"] == {"vr": vr, "Value": [json_value]}
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True)
    raw = dcmread(io.BytesIO(out.getvalue()), force=True)  # values left raw: raw_values
    assert to_dicom_json(raw)[f"{tag:08X}"] == {"vr": vr, "Value": [json_value]}


def test_deferred_values_become_bulk_without_being_read(sample: Sample) -> None:
    ds = dcmread(sample("rtplan.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.EncapsulatedDocument = b"%PDF" + b"\x01" * 100_000
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    parsed = parse_instance(buffer.getvalue(), defer_size=1024)  # its buffer is closed now
    out = to_dicom_json(
        parsed.dataset, bulk_uri_prefix=PREFIX, threshold=10**9, extra_bulk=[(0x7FE00010, "OW")]
    )
    assert out["00420011"] == {"vr": "OB", "BulkDataURI": f"{PREFIX}/bulkdata/00420011"}
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{PREFIX}/bulkdata/7FE00010"}
    assert out["300A00B0"]["Value"]  # sequences are read in full, never deferred
    with pytest.raises(ValueError, match="deferred"):
        to_dicom_json(parsed.dataset)


@pytest.mark.parametrize("implicit", [False, True])
def test_a_deferred_value_is_bulk_data_only_where_its_vr_may_be(
    sample: Sample, implicit: bool
) -> None:
    """PS3.18 §F.2.2: a long text may be a BulkDataURI; a long sequence (pydicom
    writes defined lengths, so it defers it whole) never is."""
    ds = dcmread(sample("rtplan.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")
    ds.TextValue = "x" * 5000
    codes = [Dataset() for _ in range(100)]
    for i, item in enumerate(codes):
        item.CodeValue, item.CodeMeaning = f"C{i}", "m" * 60
    ds.ConceptNameCodeSequence = codes
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    parsed = parse_instance(buffer.getvalue(), defer_size=4096)  # its buffer is closed now
    out = to_dicom_json(parsed.dataset, bulk_uri_prefix=PREFIX)
    assert out["0040A160"] == {"vr": "UT", "BulkDataURI": f"{PREFIX}/bulkdata/0040A160"}
    assert out["0040A043"] == to_dicom_json(ds)["0040A043"]


def test_sequence_values_over_the_threshold_are_bulk(sample: Sample) -> None:
    out = to_dicom_json(dcmread(sample("waveform_ecg.dcm")), bulk_uri_prefix=PREFIX)
    waveform = out["54000100"]["Value"][1]["54001010"]
    assert waveform == {"vr": "OW", "BulkDataURI": f"{PREFIX}/bulkdata/54000100/1/54001010"}


def test_from_dicom_json_resolves_bulk_data() -> None:
    obj = {"7FE00010": {"vr": "OB", "BulkDataURI": f"{PREFIX}/bulkdata/7FE00010"}}
    seen: list[tuple[str, str, str]] = []

    def resolve(tag: str, vr: str, uri: str) -> bytes:
        seen.append((tag, vr, uri))
        return b"\x01\x02"

    assert from_dicom_json(obj, resolve).PixelData == b"\x01\x02"
    assert seen == [("7FE00010", "OB", f"{PREFIX}/bulkdata/7FE00010")]
    assert not from_dicom_json(obj).PixelData


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((0x7FE00010,), "7FE00010"),
        ((0x00540016, 0, 0x00181072), "00540016/0/00181072"),
        ((0x00400275, 12, 0x0040A730, 3, 0x00420011), "00400275/12/0040A730/3/00420011"),
    ],
)
def test_tag_paths(path: tuple[int, ...], text: str) -> None:
    assert format_tag_path(path) == text
    assert parse_tag_path(text) == path
    assert parse_tag_path(text.lower()) == path


@pytest.mark.parametrize(
    "text", ["", "7FE0001", "7FE00010/", "00540016/x/00181072", "../etc", "7FE00010/0"]
)
def test_bad_tag_paths(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tag_path(text)


def test_instance_uri_prefix() -> None:
    assert instance_uri_prefix("https://pacs.test/dicomweb/", "1.2", "1.2.3", "1.2.3.4") == PREFIX


def _converted(ds: Dataset) -> Dataset:
    """``ds`` with every raw element converted by pydicom (what the raw decoding skips)."""
    ds.walk(lambda _ds, _elem: None)
    return ds


@pytest.mark.parametrize("name", CLEAN)
def test_raw_decoding_agrees_with_pydicom_conversion(sample: Sample, name: str) -> None:
    raw = to_dicom_json(dcmread(sample(name)), bulk_uri_prefix=PREFIX)
    assert raw == to_dicom_json(_converted(dcmread(sample(name))), bulk_uri_prefix=PREFIX)


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", ""])
def test_raw_decoding_of_text_in_simple_character_sets(charset: str) -> None:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = "Müller^Zoë" if charset else "Muller^Zoe"
    ds.StudyDescription = "Thorax \\ Abdomen "  # a backslash separates LO values
    ds.add_new(0x00081030 + 0x10, "LT", "line one\\ not split  ")  # (0008,1040) LT
    ds.add_new(0x00200013, "IS", " 7 ")
    ds.add_new(0x00280010, "US", 512)
    encoded = io.BytesIO()
    ds.save_as(encoded, implicit_vr=False, little_endian=True)
    fresh = dcmread(io.BytesIO(encoded.getvalue()), force=True)
    again = dcmread(io.BytesIO(encoded.getvalue()), force=True)
    assert to_dicom_json(fresh) == to_dicom_json(_converted(again))
    assert to_dicom_json(fresh)["00100010"]["Value"] == [{"Alphabetic": str(ds.PatientName)}]
