"""Demo images for ``radhub serve --demo``: a small study for each completed order
of the demo data set, so a viewer pointed at a fresh server has something to open.

``demo_studies`` reads the demo transaction Bundle (pure): for each completed
ServiceRequest, its patient's MRN, name, sex and birth date, its accession
number and procedure, and its appointment's start. ``study_instances`` makes
that study's Part-10 files with pydicom (pure, and the same bytes on every
call: UIDs derive from the accession number). The images are synthetic
phantoms, 128×128, shaped by the body part and valued by the modality: CT in
Hounsfield units with a lung window series, MR T1 and T2, ultrasound speckle,
and radiographs stored RLE Lossless, so a viewer also meets a compressed
transfer syntax. ``load_demo_images`` stores them through the ingest service,
the road a STOW-RS takes, so the ImagingStudy sync links each study to its
Patient and its order as it would for a modality's images.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, FileMetaDataset, dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

from dicomweb.ingest import IngestService
from dicomweb.multipart import single_chunk
from fhir_server.demo import PROCEDURES

Json = dict[str, Any]
SIZE = 128  # rows and columns
PIXEL_MM = 2.5
SLICE_MM = 5.0
DEMO_NAMESPACE = uuid.UUID("6f1d3c52-5a0e-4b8e-9a51-7d2f0c4e9b13")  # radhub's demo images


@dataclass(frozen=True)
class DemoStudy:
    """What the demo Bundle says about one imaged order."""

    mrn: str
    mrn_system: str
    family: str
    given: str
    sex: str  # DICOM PatientSex: F, M or O
    birth_date: str  # DA
    accession: str
    procedure_code: str  # LOINC
    procedure: str
    modality: str
    body_part: str
    started: datetime


@dataclass(frozen=True)
class SeriesPlan:
    description: str
    images: int
    window: tuple[float, float] | None = None  # centre, width
    contrast: str = ""  # which tissue values (MR: "T1" or "T2")


@dataclass(frozen=True)
class ModalityPlan:
    sop_class: str
    bits_stored: int
    series: tuple[SeriesPlan, ...]
    compressed: bool = False
    cross_sectional: bool = True  # slices with a position in the patient


CT_IMAGE, MR_IMAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
DX_IMAGE, US_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.6.1"
PLANS: dict[str, ModalityPlan] = {
    "CT": ModalityPlan(
        CT_IMAGE,
        12,
        (
            SeriesPlan("Axial 5 mm soft tissue", 10, (40, 400)),
            SeriesPlan("Axial 5 mm lung", 10, (-600, 1500)),
        ),
    ),
    "MR": ModalityPlan(
        MR_IMAGE,
        12,
        (
            SeriesPlan("Axial T1", 8, (500, 1000), "T1"),
            SeriesPlan("Axial T2", 8, (700, 1400), "T2"),
        ),
    ),
    "DX": ModalityPlan(
        DX_IMAGE,
        12,
        (SeriesPlan("Chest PA and lateral", 2, (1800, 3600)),),
        compressed=True,
        cross_sectional=False,
    ),
    "US": ModalityPlan(US_IMAGE, 8, (SeriesPlan("Abdomen", 4),), cross_sectional=False),
}

# Body parts as ellipses (centre x, centre y, radius x, radius y, tissue) in a
# -1..1 field of view, drawn in order, each over the ones before.
Region = tuple[float, float, float, float, str]
ANATOMY: dict[str, tuple[Region, ...]] = {
    "CHEST": (
        (0.0, 0.0, 0.85, 0.62, "soft"),
        (-0.38, -0.05, 0.28, 0.42, "lung"),
        (0.38, -0.05, 0.28, 0.42, "lung"),
        (0.08, 0.05, 0.2, 0.18, "soft"),
        (0.0, 0.48, 0.09, 0.09, "bone"),
    ),
    "HEAD": (
        (0.0, 0.0, 0.72, 0.88, "bone"),
        (0.0, 0.0, 0.66, 0.82, "brain"),
        (-0.1, -0.05, 0.05, 0.22, "fluid"),
        (0.1, -0.05, 0.05, 0.22, "fluid"),
    ),
    "ABDOMEN": (
        (0.0, 0.0, 0.85, 0.62, "soft"),
        (-0.35, -0.12, 0.32, 0.3, "liver"),
        (0.32, -0.22, 0.1, 0.1, "fluid"),
        (-0.35, 0.33, 0.1, 0.14, "soft"),
        (0.35, 0.33, 0.1, 0.14, "soft"),
        (0.0, 0.45, 0.09, 0.09, "bone"),
    ),
}
# stored values per tissue (CT: Hounsfield units + 1024, with RescaleIntercept -1024)
TISSUE: dict[str, dict[str, int]] = {
    "CT": {
        "air": 24,
        "soft": 1064,
        "liver": 1084,
        "lung": 224,
        "bone": 2024,
        "fluid": 1029,
        "brain": 1059,
    },
    "T1": {
        "air": 0,
        "soft": 520,
        "liver": 600,
        "lung": 40,
        "bone": 150,
        "fluid": 180,
        "brain": 700,
    },
    "T2": {
        "air": 0,
        "soft": 420,
        "liver": 300,
        "lung": 60,
        "bone": 120,
        "fluid": 1400,
        "brain": 650,
    },
    "DX": {
        "air": 80,
        "soft": 1800,
        "liver": 1900,
        "lung": 700,
        "bone": 3300,
        "fluid": 1850,
        "brain": 1900,
    },
    "US": {"air": 0, "soft": 120, "liver": 140, "lung": 30, "bone": 235, "fluid": 8, "brain": 110},
}
PROCEDURE_BY_CODE = {p.code: p for p in PROCEDURES}


def demo_studies(bundle: Json) -> list[DemoStudy]:
    """The studies of the demo Bundle: one per completed ServiceRequest that has a
    patient and an appointment (pure)."""
    by_url = {e["fullUrl"]: e["resource"] for e in bundle.get("entry", [])}
    starts = {
        ref["reference"]: datetime.fromisoformat(r["start"])
        for r in by_url.values()
        if r["resourceType"] == "Appointment"
        for ref in r.get("basedOn", [])
    }
    studies = []
    for url, order in by_url.items():
        if order["resourceType"] != "ServiceRequest" or order.get("status") != "completed":
            continue
        patient = by_url.get(order.get("subject", {}).get("reference", ""))
        started = starts.get(url)
        if patient is None or started is None:
            continue
        studies.append(_study(order, patient, started))
    return studies


def _study(order: Json, patient: Json, started: datetime) -> DemoStudy:
    mrn = patient["identifier"][0]
    name = patient["name"][0]
    procedure = PROCEDURE_BY_CODE[order["code"]["coding"][0]["code"]]
    return DemoStudy(
        mrn=mrn["value"],
        mrn_system=mrn["system"],
        family=name["family"],
        given=" ".join(name.get("given", [])),
        sex={"female": "F", "male": "M"}.get(patient.get("gender", ""), "O"),
        birth_date=patient.get("birthDate", "").replace("-", ""),
        accession=order["identifier"][0]["value"],
        procedure_code=procedure.code,
        procedure=procedure.display,
        modality=procedure.modality,
        body_part=procedure.body_part,
        started=started,
    )


def _uid(*parts: object) -> UID:
    """A UID under 2.25 (PS3.5 B.2) made from a name-based UUID of ``parts``: the
    same on every run. (pydicom's ``generate_uid`` ignores its entropy sources
    under 2.25 and would give a random one.)"""
    name = "/".join(map(str, parts))
    return UID(f"2.25.{uuid.uuid5(DEMO_NAMESPACE, name).int}")


def phantom(
    body_part: str, tissues: dict[str, int], depth: float, width: float = 1.0
) -> NDArray[np.uint16]:
    """One image of ``body_part``: its regions, narrowed by ``width`` (a lateral view)
    and grown or shrunk with ``depth`` (0..1 through the volume), valued by ``tissues``."""
    y, x = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    image = np.full((SIZE, SIZE), tissues["air"], dtype=np.uint16)
    scale = 0.75 + 0.3 * np.sin(np.pi * depth)
    for cx, cy, rx, ry, tissue in ANATOMY[body_part]:
        inside = ((x - cx * width) / (rx * scale * width)) ** 2 + ((y - cy) / (ry * scale)) ** 2
        image[inside <= 1.0] = tissues[tissue]
    return image


def _speckle(image: NDArray[np.uint16], seed: str) -> NDArray[np.uint16]:
    rng = np.random.default_rng(list(seed.encode()))
    noisy = image * rng.rayleigh(0.8, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint16)


def study_instances(study: DemoStudy) -> list[bytes]:
    """The study's Part-10 files (pure: the same bytes on every call)."""
    plan = PLANS[study.modality]
    study_uid = _uid(study.accession)
    files = []
    for s, series in enumerate(plan.series, start=1):
        series_uid = _uid(study.accession, s)
        for i in range(series.images):
            ds = _instance(study, plan, series, study_uid, series_uid, s, i)
            files.append(_encoded(ds, plan))
    return files


def _instance(
    study: DemoStudy,
    plan: ModalityPlan,
    series: SeriesPlan,
    study_uid: UID,
    series_uid: UID,
    number: int,
    index: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the demo's names are not all ASCII
    ds.SOPClassUID = plan.sop_class
    ds.SOPInstanceUID = _uid(study.accession, number, index)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName = f"{study.family}^{study.given}"
    ds.PatientID, ds.IssuerOfPatientID = study.mrn, study.mrn_system
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    day, time = study.started.strftime("%Y%m%d"), study.started.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.TimezoneOffsetFromUTC = study.started.strftime("%z") or "+0000"
    ds.AccessionNumber, ds.StudyID = study.accession, study.accession[-6:]
    ds.StudyDescription, ds.SeriesDescription = study.procedure, series.description
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = study.procedure_code, "LN"
    code.CodeMeaning = study.procedure
    ds.ProcedureCodeSequence = [code]
    ds.Modality, ds.BodyPartExamined = study.modality, study.body_part
    ds.Manufacturer = "radhub demo"
    ds.SeriesNumber, ds.InstanceNumber = number, index + 1
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"] if plan.cross_sectional else ["ORIGINAL", "PRIMARY"]
    )
    _pixels(ds, study, plan, series, index)
    return ds


def _pixels(
    ds: Dataset, study: DemoStudy, plan: ModalityPlan, series: SeriesPlan, index: int
) -> None:
    depth = (index + 0.5) / series.images
    lateral = study.modality == "DX" and index == 1
    values = TISSUE[series.contrast or study.modality]
    image = phantom(study.body_part, values, depth, 0.55 if lateral else 1.0)
    if study.modality == "US":
        image = _speckle(image, f"{ds.SOPInstanceUID}")
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if plan.bits_stored == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = plan.bits_stored, plan.bits_stored - 1, 0
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    if series.window is not None:
        ds.WindowCenter, ds.WindowWidth = series.window
    if study.modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    if plan.cross_sectional:
        z = -SLICE_MM * index
        ds.ImagePositionPatient = [-SIZE * PIXEL_MM / 2, -SIZE * PIXEL_MM / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.SliceLocation = SLICE_MM, z
    if study.modality == "DX":
        ds.ViewPosition = "LL" if lateral else "PA"
    pixels = image.astype(np.uint8 if ds.BitsAllocated == 8 else np.uint16)
    ds.PixelData = pixels.tobytes()


def _encoded(ds: Dataset, plan: ModalityPlan) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if plan.compressed:
        ds.compress(RLELossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def demo_instances(bundle: Json) -> list[bytes]:
    """Every demo study's files (pure)."""
    return [f for study in demo_studies(bundle) for f in study_instances(study)]


async def load_demo_images(ingest: IngestService, bundle: Json) -> int:
    """Store the demo images of ``bundle`` through ``ingest``; how many were stored.
    Fails, naming them, if any instance was refused."""
    files = await asyncio.to_thread(demo_instances, bundle)
    report = await ingest.ingest(_bodies(files))
    if report.failed:
        reasons = "; ".join(f"{f.sop_uid}: {f.message}" for f in report.failed)
        raise RuntimeError(f"{len(report.failed)} demo instances were refused: {reasons}")
    return len(report.stored)


async def _bodies(files: Sequence[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    for data in files:
        yield single_chunk(data)
