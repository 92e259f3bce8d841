"""The fast road of ingest (``header_scan`` through ``scan_instance``) against pydicom's.

``describe_instance`` takes the fast road when the scan accepts a file and
pydicom's road otherwise; both must give the same header, index record and
metadata bytes, or the same rejection. Checked on pydicom's bundled files, on
generated instances built to reach each branch of the scan, and on seeded
random truncations and byte changes of both.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb.ingest_parse import (
    SCAN_FIRST,
    SCAN_MOST,
    InstanceRejected,
    parse_instance,
    scan_instance,
)
from dicomweb.records import Described, describe_instance, index_record
from fhir_server.storage.dicom_port import BlobLocation
from tests.dicomweb.conftest import Sample, bundled
from tests.dicomweb.dicom_data import make_instance

BASE = "http://archive.test/dicomweb"
NO_BLOB = BlobLocation("", 0, "")
Outcome = Described | tuple[str, int, str]
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _pydicom_road(source: Path | bytes) -> Outcome:
    try:
        parsed = parse_instance(source)
    except InstanceRejected as exc:
        return "rejected", exc.reason, exc.message
    return Described(parsed.header, index_record(parsed, NO_BLOB, BASE))


def _described(source: Path | bytes) -> Outcome:
    try:
        return describe_instance(source, BASE)
    except InstanceRejected as exc:
        return "rejected", exc.reason, exc.message


def _assert_same(source: Path | bytes) -> None:
    fast, slow = _described(source), _pydicom_road(source)
    assert fast == slow
    if isinstance(fast, Described) and isinstance(slow, Described):
        assert fast.record.metadata == slow.record.metadata  # byte for byte, key order too


def _bundled() -> list[Path]:
    """pydicom's bundled test files (its list would also try to download others)."""
    return sorted(bundled("CT_small.dcm").parent.glob("*.dcm"))


def _rich_instance(
    *, charset: str = "ISO_IR 192", name: str = "Müller^Jürgen=ミュラー^ユルゲン", padding: int = 0
) -> bytes:
    """An explicit VR little endian instance reaching every branch of the scan:
    group lengths, a UTF-8 character set, empty values, multi-valued numbers,
    defined and undefined length sequences and items, nested sequences, inline and
    bulk binary values inside items, and optionally a long private text value that
    pushes the header beyond the first read (``SCAN_FIRST``)."""
    person = dict(zip(_PN_GROUPS, name.split("="), strict=False))
    ds = Dataset.from_json(
        {
            "00080005": {"vr": "CS", "Value": [charset]},
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
            "00080018": {"vr": "UI", "Value": ["1.2.3.4.5.6.7"]},
            "00080020": {"vr": "DA"},
            "00080060": {"vr": "CS", "Value": ["OT"]},
            "00100010": {"vr": "PN", "Value": [person]},
            "00100020": {"vr": "LO", "Value": ["ÜID-1", "SECOND"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
            "0020000E": {"vr": "UI", "Value": ["1.2.3.4.5"]},
            "00200011": {"vr": "IS", "Value": [7]},
            "00200032": {"vr": "DS", "Value": [-1.5, 2, 3.25]},
            "00280010": {"vr": "US", "Value": [2]},
            "00280011": {"vr": "US", "Value": [2]},
            "00181310": {"vr": "US", "Value": [0, 2, 2, 0]},
            "00400275": {
                "vr": "SQ",
                "Value": [
                    {
                        "00400007": {"vr": "LO", "Value": ["Step ä"]},
                        "00400008": {
                            "vr": "SQ",
                            "Value": [{"00080100": {"vr": "SH", "Value": ["C1"]}}, {}],
                        },
                    },
                    {"00091010": {"vr": "LT", "Value": ["note"]}},
                ],
            },
            "00880200": {
                "vr": "SQ",
                "Value": [
                    {
                        "00280010": {"vr": "US", "Value": [64]},
                        "00280011": {"vr": "US", "Value": [64]},
                        "7FE00010": {"vr": "OB", "InlineBinary": "AAECAw=="},
                    }
                ],
            },
            "00081140": {"vr": "SQ"},
        }
    )
    ds["00880200"].value[0].add_new(0x7FE00010, "OW", bytes(range(256)) * 16)  # bulk, nested
    ds.add_new(0x00091001, "OB", b"\x01\x02")
    ds.add_new(0x00091002, "OW", b"\x00\x01" * 700)
    ds.add_new(0x00091003, "FD", [1.5, -2.25])
    ds.add_new(0x00091004, "SL", -5)
    if padding:
        ds.add_new(0x00091005, "LO", "x" * 60)
        ds.add_new(0x00091006, "OB", b"\x07" * padding)  # deferred by pydicom: bulk
    ds["00400275"].value[0]["00400008"].is_undefined_length = True
    ds.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds["00400275"].is_undefined_length = True
    for item in ds["00400275"].value:
        item.is_undefined_length_sequence_item = True
    ds.add_new(0x00280000, "UL", 0)  # a group length: kept by pydicom, not in the JSON
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_common_cases_take_the_fast_road(sample: Sample) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "waveform_ecg.dcm", "examples_palette.dcm"):
        assert scan_instance(sample(name)) is not None, name
    assert scan_instance(make_instance("1.2.3", "1.2.3.4")) is not None
    assert scan_instance(_rich_instance()) is not None


@pytest.mark.parametrize(
    "name",
    [
        "rtplan.dcm",  # implicit VR
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "image_dfl.dcm",  # deflated
        "no_meta.dcm",  # no preamble
        "ExplVR_BigEndNoMeta.dcm",
    ],
)
def test_other_files_are_left_to_pydicom(sample: Sample, name: str) -> None:
    assert scan_instance(sample(name)) is None


def test_code_extensions_and_implicit_vr_are_left_to_pydicom() -> None:
    assert scan_instance(_rich_instance(charset="ISO 2022 IR 100", name="Muller")) is None
    assert scan_instance(make_instance("1.2.3", "1.2.3.4", implicit=True)) is None


def test_every_bundled_file_the_scan_accepts_is_described_as_pydicom_does() -> None:
    accepted = [path for path in _bundled() if scan_instance(path) is not None]
    assert len(accepted) >= 30  # the test covers many files, not none
    for path in accepted:
        _assert_same(path)
        _assert_same(path.read_bytes())


@pytest.mark.parametrize("padding", [0, SCAN_FIRST + 10])
def test_generated_instances_are_described_as_pydicom_does(padding: int) -> None:
    data = _rich_instance(padding=padding)
    scanned = scan_instance(data)
    assert scanned is not None
    assert scanned.header.patient_name == "Müller^Jürgen=ミュラー^ユルゲン"
    assert len(scanned.bulk) == (3 if padding else 2)  # the OW, the item's pixels (+ padding)
    _assert_same(data)
    described = describe_instance(data, BASE)
    nested = described.record.instance_attrs["00880200"]["Value"][0]["7FE00010"]
    assert nested["BulkDataURI"].endswith("/instances/1.2.3.4.5.6.7/bulkdata/00880200/0/7FE00010")


def test_a_header_longer_than_the_fast_road_reads_is_left_to_pydicom() -> None:
    data = _rich_instance(padding=SCAN_MOST)  # a large value before the pixel data
    assert scan_instance(data) is None
    described = describe_instance(data, BASE)
    metadata = orjson.loads(described.record.metadata)
    assert metadata["00091006"]["BulkDataURI"].endswith("/bulkdata/00091006")
    _assert_same(data)


def test_a_long_sequence_is_described_as_pydicom_does() -> None:
    """A sequence longer than pydicom's defer size, with a defined length (as pydicom
    writes one): both roads give its items, never a BulkDataURI (PS3.18 §F.2.2)."""
    ds = dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.4")))
    codes = [Dataset() for _ in range(1000)]
    for i, item in enumerate(codes):
        item.CodeValue, item.CodeMeaning = f"C{i}", "m" * 60
    ds.ConceptNameCodeSequence = codes
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert scan_instance(out.getvalue()) is not None
    _assert_same(out.getvalue())


def test_an_image_without_pixel_data_is_refused_as_pydicom_refuses_it() -> None:
    data = make_instance("1.2.3", "1.2.3.4")
    cut = data[: data.rindex(b"\xe0\x7f\x10\x00")]  # ends just before the pixel data
    assert scan_instance(cut) is None
    assert _described(cut)[:2] == ("rejected", 0xA900)
    _assert_same(cut)


def _mutations(data: bytes, rnd: random.Random, count: int) -> list[bytes]:
    header = min(len(data), 4096)
    out = []
    for _ in range(count):
        if rnd.random() < 0.3:
            out.append(data[: rnd.randrange(len(data))])
            continue
        changed = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            changed[rnd.randrange(header)] = rnd.randrange(256)
        out.append(bytes(changed))
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on damaged values
@pytest.mark.parametrize("seed", range(3))
def test_damaged_files_get_the_same_outcome_on_both_roads(sample: Sample, seed: int) -> None:
    rnd = random.Random(seed)
    sources = [sample("CT_small.dcm").read_bytes(), sample("waveform_ecg.dcm").read_bytes()]
    sources += [make_instance("1.2.3", "1.2.3.4"), _rich_instance()]
    fast_road = 0
    for data in sources:
        for damaged in _mutations(data, rnd, 150):
            try:
                slow = _pydicom_road(damaged)
            except Exception as exc:  # pydicom itself failing: the fast road must too
                with pytest.raises(type(exc)):
                    _described(damaged)
                continue
            assert _described(damaged) == slow
            fast_road += isinstance(slow, Described) and scan_instance(damaged) is not None
    assert fast_road > 100  # many damaged files still took (and agreed on) the fast road
