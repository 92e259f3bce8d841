"""``value_place`` finds each binary value where pydicom reads it, at any depth, in
every transfer syntax pydicom's bundled files are stored in, and in the undefined
lengths and UN sequences files carry."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicomweb.value_place import NoValue, TagPath, place, places
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import make_instance

BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def binary_values(ds: Dataset, prefix: TagPath = ()) -> Iterator[tuple[TagPath, bytes, bool]]:
    """Every binary value of ``ds`` with its path, and whether its length is undefined."""
    for element in ds:
        path = (*prefix, int(element.tag))
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from binary_values(item, (*path, index))
        elif element.VR in BINARY_VRS and isinstance(element.value, bytes):
            yield path, element.value, element.is_undefined_length


def bundled_files() -> list[Path]:
    found = []
    for name in sorted(bundled("CT_small.dcm").parent.glob("*.dcm")):
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                ds = dcmread(name)
            except (InvalidDicomError, OSError, ValueError, KeyError):
                continue
        if warned:  # stored otherwise than its transfer syntax says, or malformed
            continue
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
        if syntax is None or syntax == DeflatedExplicitVRLittleEndian or ds.preamble is None:
            continue
        found.append(Path(name))
    return found


@pytest.mark.parametrize("file", bundled_files(), ids=lambda p: p.name)
def test_every_binary_value_is_where_pydicom_reads_it(file: Path) -> None:
    ds = dcmread(file)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    data = file.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's about other values, converted on the way
        values = list(binary_values(ds))
    with file.open("rb") as fp:
        for path, value, undefined in values:
            if undefined:  # encapsulated pixel data: no single value at an offset
                with pytest.raises(NoValue):
                    place(fp, path, syntax)
                continue
            offset, length = place(fp, path, syntax)
            assert data[offset : offset + length] == value, path


def test_the_bundled_files_cover_the_encodings_and_nested_values() -> None:
    files = bundled_files()
    syntaxes = {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"} <= syntaxes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = [p for f in files for p, _, _ in binary_values(dcmread(f)) if len(p) > 1]
    assert len(nested) >= 2  # waveform_ecg.dcm's two WaveformData, at least


def _element(tag: int, vr: bytes, value: bytes, *, undefined: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined else len(value)
    return (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + vr
        + b"\0\0"
        + struct.pack("<I", length)
        + value
    )


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR element with a 2-byte length (PS3.5 Table 7.1-2)."""
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _implicit(tag: int, value: bytes, *, undefined: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined else len(value)
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value


ITEM = _implicit(0xFFFEE000, b"", undefined=True)
ITEM_END = _implicit(0xFFFEE00D, b"")
SEQUENCE_END = _implicit(0xFFFEE0DD, b"")
WAVEFORMS, DATA, BITS = 0x54000100, 0x54001010, 0x003A021A


def _file_with(tail: bytes) -> bytes:
    """A Part-10 file (explicit VR little endian, no pixel data) ending in ``tail``."""
    ds = dcmread(io.BytesIO(make_instance("1.2", "1.2.1", "1.2.1.1")))
    for tag in [t for t in ds.keys() if t > 0x54000000]:
        del ds[tag]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + tail


SAMPLES_1, SAMPLES_2 = bytes(range(200)) * 4, b"\x01\x02" * 300


@pytest.mark.parametrize(
    "tail",
    [
        # an undefined-length sequence of undefined-length items, a small element first
        _element(
            WAVEFORMS,
            b"SQ",
            ITEM
            + _element(DATA, b"OW", SAMPLES_1)
            + ITEM_END
            + ITEM
            + _short(BITS, b"US", b"\x10\x00")
            + _element(DATA, b"OW", SAMPLES_2)
            + ITEM_END
            + SEQUENCE_END,
            undefined=True,
        ),
        # an undefined-length UN: its items are implicit VR little endian (PS3.5 §6.2.2)
        _element(
            WAVEFORMS,
            b"UN",
            ITEM
            + _implicit(DATA, SAMPLES_1)
            + ITEM_END
            + ITEM
            + _implicit(DATA, SAMPLES_2)
            + ITEM_END
            + SEQUENCE_END,
            undefined=True,
        ),
    ],
    ids=["undefined-lengths", "undefined-length-UN"],
)
def test_values_in_undefined_length_items(tmp_path: Path, tail: bytes) -> None:
    file = tmp_path / "x.dcm"
    file.write_bytes(_file_with(tail))
    data = file.read_bytes()
    with file.open("rb") as fp:
        found = places(
            fp,
            [(WAVEFORMS, 0, DATA), (WAVEFORMS, 1, DATA), (WAVEFORMS, 2, DATA)],
            str(ExplicitVRLittleEndian),
        )
    assert {path: data[o : o + n] for path, (o, n) in found.items()} == {
        (WAVEFORMS, 0, DATA): SAMPLES_1,
        (WAVEFORMS, 1, DATA): SAMPLES_2,
    }
    # pydicom reads the same values there
    items = dcmread(file).WaveformSequence
    assert [bytes(i[DATA].value) for i in items] == [SAMPLES_1, SAMPLES_2]


@pytest.mark.parametrize(
    "path",
    [(0x7FE00010, 0), (0x00100010, 0, 0x00100010), (0x60003000,), (0x00080018, 0, 1)],
    ids=["even-length-path", "not-a-sequence", "absent", "item-of-a-text"],
)
def test_a_path_the_file_does_not_hold(tmp_path: Path, path: TagPath) -> None:
    file = tmp_path / "x.dcm"
    file.write_bytes(make_instance("1.2", "1.2.1", "1.2.1.1"))
    with file.open("rb") as fp, pytest.raises(NoValue):
        place(fp, path, str(ExplicitVRLittleEndian))


def test_a_file_without_the_part_10_prefix(tmp_path: Path) -> None:
    file = tmp_path / "x.dcm"
    file.write_bytes(b"\0" * 200)
    with file.open("rb") as fp, pytest.raises(NoValue):
        place(fp, (0x7FE00010,), str(ExplicitVRLittleEndian))
