"""Generated DICOM instances and multipart bodies for the archive's HTTP tests."""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

BOUNDARY = "radhub-test-boundary"
CT = CTImageStorage


def part10(sop_class: str, sop: str, transfer_syntax: str, study: str, series: str) -> Dataset:
    """A data set with its file meta and the UIDs that name it, to be filled in."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    return ds


def make_instance(
    study: str,
    series: str,
    sop: str | None = None,
    *,
    patient_id: str = "PAT-1",
    name: str = "Doe^Jane",
    modality: str = "CT",
    date: str = "20240105",
    accession: str = "ACC-1",
    number: int = 1,
    frames: int = 1,
    implicit: bool = False,
) -> bytes:
    """A small Part-10 CT image (16-bit, 8x8 per frame) as bytes."""
    syntax = "1.2.840.10008.1.2" if implicit else ExplicitVRLittleEndian
    ds = part10(CT, sop or generate_uid(), syntax, study, series)
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = (
        patient_id,
        name,
        "F",
        "19700101",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.Modality = (
        date,
        "101500",
        accession,
        modality,
    )
    ds.SeriesNumber, ds.InstanceNumber, ds.StudyDescription = 1, number, "CHEST"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = (np.arange(64 * frames, dtype=np.uint16) * 7 % 4096).reshape(frames, 8, 8)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def rle_instance(
    study: str, series: str, sop: str, *, side: int, frames: int = 1, number: int = 1
) -> bytes:
    """A black 8-bit ``side``x``side`` CT image in RLE Lossless (``side`` a multiple of
    128): each row of 128 zeros is two bytes (PS3.5 Annex G), so the file is about
    1/64 of its decoded size."""
    ds = part10(CT, sop, RLELossless, study, series)
    ds.PatientID, ds.PatientName, ds.Modality = "PAT-RLE", "Rle^Large", "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    header = struct.pack("<16I", 1, 64, *([0] * 14))  # one segment, right after the header
    segment = b"\x81\x00" * (side // 128) * side  # 128 copies of 0, for every row
    ds.PixelData = encapsulate([header + segment] * frames)
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def multipart(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    """A multipart/related body of ``parts``."""
    chunks = [
        f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    ]
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The part bodies of a multipart response (headers dropped)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"')
    pieces = body.split(f"--{boundary}".encode())[1:-1]
    return [p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for p in pieces]


def with_values(body: bytes, **values: Any) -> bytes:
    """``body`` with attributes set, to values pydicom may warn are invalid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(body))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
