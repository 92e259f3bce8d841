"""Synthetic DICOM data for ``bench/dicom_bench.py``: planned deterministically, written once.

Two kinds of instances, each a Part-10 file in Explicit VR Little Endian:

* ``real``: CT or MR images, 512x512, 16-bit (about 0.5 MB each), 2 series of
  25 instances per study. STOW-RS and WADO-RS throughput are measured on these.
* ``small``: the same header with a 64x64 image (about 9 KB), 2 series of 10
  instances per study. They take the archive from 10,000 to 100,000 instances
  for the QIDO-RS measurements without 50 GB of disk per server (QIDO cost
  depends on the number of instances and studies, not on pixel bytes).

Patients have about two studies each; names come from a list where ``SMI*``
selects about a sixth of them; study dates spread over 2015-2024; accession
numbers are unique. The plan is a pure function of the counts, so a second
run finds the files of the first (``--data``) and only writes what is missing.
"""

from __future__ import annotations

import io
import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

ROOT_UID = "1.2.826.0.1.3680043.9.7433.1"  # a private test root, never a real patient
FAMILIES = (
    "SMITH", "SMITHSON", "SMIRNOV", "JONES", "BROWN", "GARCIA", "MILLER", "DAVIS",
    "MARTIN", "LEE", "WILSON", "TAYLOR", "NGUYEN", "MOORE", "CLARK", "LEWIS", "WALKER", "HALL",
)  # fmt: skip
GIVENS = ("JOHN", "MARY", "ALEX", "SARA", "PETER", "ANNA", "DAVID", "LUCY", "OMAR", "INES")
SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
SHAPES = {"real": (512, 25), "small": (64, 10)}  # image side, instances per series
SERIES_PER_STUDY = 2
FIRST_DAY = date(2015, 1, 1)
DAYS = 3650


@dataclass(frozen=True)
class Series:
    uid: str
    number: int
    description: str
    instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """One planned study: its identifying attributes and where its files live."""

    kind: str
    index: int
    uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    accession: str
    modality: str
    series: tuple[Series, ...]

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.index:06d}"

    def files(self, data: Path) -> list[Path]:
        """The instance files in series then instance order."""
        return [
            data / self.folder / f"{s.number}_{n:03d}.dcm"
            for s in self.series
            for n in range(1, len(s.instance_uids) + 1)
        ]

    @property
    def n_instances(self) -> int:
        return sum(len(s.instance_uids) for s in self.series)


def plan(kind: str, n_instances: int) -> list[Study]:
    """The studies of ``kind`` holding ``n_instances`` (rounded up to whole studies)."""
    per_series = SHAPES[kind][1]
    per_study = per_series * SERIES_PER_STUDY
    rng = random.Random(f"radhub-dicom-bench-{kind}")
    studies = []
    for k in range(-(-n_instances // per_study)):
        studies.append(_study(kind, k, rng, per_series))
    return studies


def _study(kind: str, k: int, rng: random.Random, per_series: int) -> Study:
    tag = 1 if kind == "real" else 2
    uid = f"{ROOT_UID}.{tag}.{k}"
    patient = k // 2
    prng = random.Random(f"{kind}-patient-{patient}")  # same demographics for both studies
    modality = rng.choice(("CT", "MR"))
    series = tuple(
        Series(
            uid=f"{uid}.{s}",
            number=s,
            description=f"{modality} SERIES {s}",
            instance_uids=tuple(f"{uid}.{s}.{n}" for n in range(1, per_series + 1)),
        )
        for s in range(1, SERIES_PER_STUDY + 1)
    )
    born = FIRST_DAY - timedelta(days=prng.randrange(20 * 365, 90 * 365))
    return Study(
        kind=kind,
        index=k,
        uid=uid,
        patient_id=f"{kind[0].upper()}{patient:07d}",
        patient_name=f"{prng.choice(FAMILIES)}^{prng.choice(GIVENS)}",
        birth_date=born.strftime("%Y%m%d"),
        sex=prng.choice("FM"),
        study_date=(FIRST_DAY + timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d"),
        accession=f"A{tag}{k:08d}",
        modality=modality,
        series=series,
    )


def _dataset(study: Study, series: Series, number: int, side: int) -> Dataset:
    sop = series.instance_uids[number - 1]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[study.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[study.modality], sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series.uid
    ds.FrameOfReferenceUID = f"{series.uid}.0"
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "101500", "102000", f"1021{number % 60:02d}"
    ds.AccessionNumber, ds.StudyID = study.accession, str(study.index)
    ds.ReferringPhysicianName = "REFERRER^ROSA"
    ds.StudyDescription = f"{study.modality} {'CHEST' if study.index % 3 else 'HEAD'}"
    ds.Modality, ds.Manufacturer = study.modality, "RADHUB BENCH"
    ds.SeriesNumber, ds.SeriesDescription = series.number, series.description
    ds.BodyPartExamined = "CHEST" if study.index % 3 else "HEAD"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-250.0, -250.0, float(number) * 2.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [500.0 / side, 500.0 / side]
    ds.SliceThickness = 2.5
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if study.modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    return ds


def _pixels(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=(side, side), dtype=np.uint16).tobytes()


def write_study(data: Path, study: Study) -> None:
    """Write one study's files (skipped when its ``done`` marker exists)."""
    folder = data / study.folder
    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    side = SHAPES[study.kind][0]
    pixels = _pixels(side, study.index)
    for series in study.series:
        for number in range(1, len(series.instance_uids) + 1):
            ds = _dataset(study, series, number, side)
            ds.PixelData = pixels
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            (folder / f"{series.number}_{number:03d}.dcm").write_bytes(out.getvalue())
    (folder / "done").write_text("ok")


def _write(args: tuple[Path, Study]) -> None:
    write_study(*args)


def generate(data: Path, studies: list[Study], workers: int = 2) -> None:
    """Write every study's files that are not on disk yet, in worker processes."""
    todo = [(data, s) for s in studies if not (data / s.folder / "done").exists()]
    if not todo:
        return
    with multiprocessing.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write, todo, chunksize=4):
            pass


def all_studies(total: int, real_max: int) -> Iterator[Study]:
    """The real studies first (up to ``real_max`` instances), then small ones."""
    real = plan("real", min(total, real_max))
    yield from real
    rest = total - sum(s.n_instances for s in real)
    if rest > 0:
        yield from plan("small", rest)
