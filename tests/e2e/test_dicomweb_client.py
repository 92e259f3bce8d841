"""The ``dicomweb-client`` package against a real ``radhub serve`` process.

Generated datasets (several patients, studies, series and modalities, one
multi-frame) plus pydicom's bundled files (one JPEG 2000 lossless, one plain
CT) are stored with STOW-RS, then found with QIDO-RS at every level (results
compared with expectations computed from the datasets), retrieved with
WADO-RS (byte-identical, by SHA-256, with ``transfer-syntax=*``), and read as
metadata, frames and rendered images. Bad input over the same socket gets
the right status and failure dataset and changes nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, UltrasoundImageStorage

from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import make_instance, split_multipart
from tests.e2e.conftest import ServerProcess, cli

ROOT = "1.2.826.0.1.3680043.10.2"
ANY_TS = (("application/dicom", "*"),)
SOP_CLASS = {"MR": MRImageStorage, "US": UltrasoundImageStorage}
# (patient id, name, study date, [(modality, instances, frames per instance)])
STUDIES = [
    ("P1", "Smith^John", "20240110", [("CT", 3, 1), ("CT", 1, 4)]),
    ("P1", "Smith^John", "20240305", [("MR", 2, 1)]),
    ("P2", "Smithers^Anna", "20231120", [("US", 2, 1), ("DX", 1, 1)]),
    ("P3", "Jones^Mary", "20240120", [("CT", 2, 1), ("PT", 2, 1)]),
]
BUNDLED = ["MR_small_jp2klossless.dcm", "CT_small.dcm"]


def tag(item: dict[str, Any], keyword_tag: str) -> Any:
    """The first value of a DICOM JSON attribute, or None."""
    values = item.get(keyword_tag, {}).get("Value")
    return values[0] if values else None


def generate() -> list[Dataset]:
    """The generated instances, then the bundled ones, as the datasets a client holds."""
    out = []
    for s, (patient, name, date, series) in enumerate(STUDIES):
        study = f"{ROOT}.{s + 1}"
        for n, (modality, count, frames) in enumerate(series):
            series_uid = f"{study}.{n + 1}"
            for i in range(count):
                raw = make_instance(
                    study,
                    series_uid,
                    f"{series_uid}.{i + 1}",
                    patient_id=patient,
                    name=name,
                    modality=modality,
                    date=date,
                    accession=f"ACC{s + 1}",
                    number=i + 1,
                    frames=frames,
                )
                ds = dcmread(io.BytesIO(raw))
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS.get(
                    modality, ds.SOPClassUID
                )
                ds.SeriesNumber, ds.SeriesDescription = n + 1, f"{modality} series {n + 1}"
                ds.StudyDescription = f"study {s + 1}"
                out.append(ds)
    return out + [dcmread(bundled(name)) for name in BUNDLED]


def encoded(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds`` (it encodes with ``dcmwrite``)."""
    out = io.BytesIO()
    dcmwrite(out, ds)
    return out.getvalue()


@dataclass
class Expected:
    """What the archive must answer, computed from the datasets alone."""

    datasets: list[Dataset]
    sha: dict[str, str] = field(default_factory=dict)  # by SOP Instance UID
    by_sop: dict[str, Dataset] = field(default_factory=dict)
    studies: dict[str, list[Dataset]] = field(default_factory=lambda: defaultdict(list))
    series: dict[str, list[Dataset]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for ds in self.datasets:
            self.sha[ds.SOPInstanceUID] = hashlib.sha256(encoded(ds)).hexdigest()
            self.by_sop[ds.SOPInstanceUID] = ds
            self.studies[ds.StudyInstanceUID].append(ds)
            self.series[ds.SeriesInstanceUID].append(ds)

    def study_uids(self, keep: Any = lambda first: True) -> set[str]:
        return {uid for uid, items in self.studies.items() if keep(items[0])}


class Capture:
    """Keeps the raw bytes of the last response (dicomweb-client returns parsed datasets)."""

    def __init__(self) -> None:
        self.last: requests.Response | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        _ = response.content  # read now; requests serves iter_content from it afterwards
        self.last = response

    def parts(self) -> list[bytes]:
        assert self.last is not None
        return split_multipart(self.last.content, self.last.headers["content-type"])


@dataclass
class Archive:
    server: ServerProcess
    client: DICOMwebClient
    session: requests.Session
    capture: Capture
    expected: Expected
    stow_response: Dataset


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data = tmp_path_factory.mktemp("client") / "data"
    server = ServerProcess(data)
    server.start()
    try:
        token = cli("token", "--data-dir", str(data), "--scope", "system/*.cruds")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        capture = Capture()
        session.hooks["response"].append(capture)
        client = DICOMwebClient(f"{server.base}/dicomweb", session=session)
        expected = Expected(generate())
        stored = client.store_instances(expected.datasets)
        yield Archive(server, client, session, capture, expected, stored)
    finally:
        server.kill()


def test_stow_acknowledges_every_instance(archive: Archive) -> None:
    response = archive.stow_response
    refs = response.ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in refs} == set(archive.expected.sha)
    assert "FailedSOPSequence" not in response or len(response.FailedSOPSequence) == 0
    for ref in refs:
        ds = archive.expected.by_sop[ref.ReferencedSOPInstanceUID]
        assert ref.ReferencedSOPClassUID == ds.SOPClassUID
        assert ref.RetrieveURL == (
            f"{archive.server.base}/dicomweb/studies/{ds.StudyInstanceUID}"
            f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
    # into a named study: the client's second form of the transaction
    ds = archive.expected.datasets[0]
    again = archive.client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    assert [r.ReferencedSOPInstanceUID for r in again.ReferencedSOPSequence] == [ds.SOPInstanceUID]


def test_qido_studies(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    found = client.search_for_studies(fields=["StudyDescription"])
    assert {tag(s, "0020000D") for s in found} == exp.study_uids()
    for study in found:
        items = exp.studies[tag(study, "0020000D")]
        first = items[0]
        assert set(study["00080061"]["Value"]) == {d.Modality for d in items}
        assert tag(study, "00201206") == len({d.SeriesInstanceUID for d in items})
        assert tag(study, "00201208") == len(items)
        assert tag(study, "00100020") == first.PatientID
        assert tag(study, "00080020") == first.StudyDate
        assert tag(study, "00081030") == first.get("StudyDescription")
        assert tag(study, "00081190").endswith(f"/dicomweb/studies/{first.StudyInstanceUID}")

    def uids(**filters: str) -> set[str]:
        return {tag(s, "0020000D") for s in client.search_for_studies(search_filters=filters)}

    assert uids(PatientName="smith*") == exp.study_uids(
        lambda d: fnmatch.fnmatchcase(str(d.PatientName).upper(), "SMITH*")
    )
    assert uids(PatientID="P1") == exp.study_uids(lambda d: d.PatientID == "P1")
    assert uids(StudyDate="20240101-20240331") == exp.study_uids(
        lambda d: "20240101" <= d.StudyDate <= "20240331"
    )
    with_mr = {uid for uid, items in exp.studies.items() if any(d.Modality == "MR" for d in items)}
    assert uids(ModalitiesInStudy="MR") == with_mr
    pages = [client.search_for_studies(limit=2, offset=o) for o in range(0, len(exp.studies), 2)]
    paged = [tag(s, "0020000D") for page in pages for s in page]
    assert sorted(paged) == sorted(exp.studies) and all(len(p) <= 2 for p in pages)


def test_qido_series(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    for study_uid, items in exp.studies.items():
        found = client.search_for_series(study_instance_uid=study_uid)
        assert {tag(s, "0020000E") for s in found} == {d.SeriesInstanceUID for d in items}
        for series in found:
            members = exp.series[tag(series, "0020000E")]
            assert tag(series, "00080060") == members[0].Modality
            assert tag(series, "00201209") == len(members)
            assert tag(series, "00200011") == members[0].get("SeriesNumber")
            assert tag(series, "00081190").endswith(f"/series/{tag(series, '0020000E')}")
    ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert {tag(s, "0020000E") for s in ct} == {
        uid for uid, members in exp.series.items() if members[0].Modality == "CT"
    }


def test_qido_instances(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    for series_uid, members in exp.series.items():
        study_uid = members[0].StudyInstanceUID
        found = client.search_for_instances(study_uid, series_uid)
        assert {tag(i, "00080018") for i in found} == {d.SOPInstanceUID for d in members}
        for item in found:
            ds = exp.by_sop[tag(item, "00080018")]
            assert tag(item, "00080016") == ds.SOPClassUID
            assert tag(item, "00200013") == ds.get("InstanceNumber")
    for study_uid, items in exp.studies.items():
        found = client.search_for_instances(study_uid)
        assert {tag(i, "00080018") for i in found} == {d.SOPInstanceUID for d in items}
    one = exp.datasets[3]
    hit = client.search_for_instances(search_filters={"SOPInstanceUID": one.SOPInstanceUID})
    assert [tag(i, "0020000D") for i in hit] == [one.StudyInstanceUID]


def test_wado_retrieve_is_byte_identical(archive: Archive) -> None:
    client, exp, capture = archive.client, archive.expected, archive.capture
    for study_uid, items in exp.studies.items():
        datasets = client.retrieve_study(study_uid, media_types=ANY_TS)
        assert {d.SOPInstanceUID for d in datasets} == {d.SOPInstanceUID for d in items}
        served = {hashlib.sha256(p).hexdigest() for p in capture.parts()}
        assert served == {exp.sha[d.SOPInstanceUID] for d in items}
    for ds in exp.datasets:
        got = client.retrieve_instance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=ANY_TS
        )
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        (part,) = capture.parts()
        assert hashlib.sha256(part).hexdigest() == exp.sha[ds.SOPInstanceUID]
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_wado_transcodes_the_compressed_one_on_request(archive: Archive) -> None:
    ds = archive.expected.datasets[-2]  # the JPEG 2000 lossless one
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    got = archive.client.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_metadata(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    for series_uid, members in exp.series.items():
        study_uid = members[0].StudyInstanceUID
        meta = client.retrieve_series_metadata(study_uid, series_uid)
        assert {tag(m, "00080018") for m in meta} == {d.SOPInstanceUID for d in members}
        for item in meta:
            ds = exp.by_sop[tag(item, "00080018")]
            assert tag(item, "00280010") == ds.Rows and tag(item, "00280011") == ds.Columns
            pixel = item["7FE00010"]
            assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
    for study_uid, items in exp.studies.items():
        assert len(client.retrieve_study_metadata(study_uid)) == len(items)
    ds = exp.datasets[0]
    one = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert tag(one, "00100010") == {"Alphabetic": str(ds.PatientName)}


def test_frames(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    multi = next(d for d in exp.datasets if int(d.get("NumberOfFrames", 1)) == 4)
    uids = (multi.StudyInstanceUID, multi.SeriesInstanceUID, multi.SOPInstanceUID)
    frames = client.retrieve_instance_frames(*uids, frame_numbers=[1, 3, 4])
    pixels = multi.pixel_array
    assert frames == [pixels[0].tobytes(), pixels[2].tobytes(), pixels[3].tobytes()]
    compressed = exp.datasets[-2]
    (frame,) = client.retrieve_instance_frames(
        compressed.StudyInstanceUID,
        compressed.SeriesInstanceUID,
        compressed.SOPInstanceUID,
        frame_numbers=[1],
    )
    assert frame == compressed.pixel_array.tobytes()


def test_rendered(archive: Archive) -> None:
    client, exp = archive.client, archive.expected
    for ds in (exp.datasets[0], exp.datasets[-2], exp.datasets[-1]):
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        jpeg = client.retrieve_instance_rendered(*uids, media_types=("image/jpeg",))
        png = client.retrieve_instance_rendered(*uids, media_types=("image/png",))
        for body, fmt in ((jpeg, "JPEG"), (png, "PNG")):
            image = Image.open(io.BytesIO(body))
            assert image.format == fmt and image.size == (ds.Columns, ds.Rows)
    multi = next(d for d in exp.datasets if int(d.get("NumberOfFrames", 1)) == 4)
    uids = (multi.StudyInstanceUID, multi.SeriesInstanceUID, multi.SOPInstanceUID)
    frame = client.retrieve_instance_frames_rendered(*uids, frame_numbers=[2])
    assert Image.open(io.BytesIO(frame)).size == (8, 8)
    windowed = client.retrieve_instance_rendered(
        *uids, media_types=("image/png",), params={"window": "100,200,linear"}
    )
    assert Image.open(io.BytesIO(windowed)).format == "PNG"


def _snapshot(archive: Archive) -> tuple[list[Any], int]:
    studies = archive.client.search_for_studies()
    blobs = Path(archive.server.data_dir) / "blobs"
    return sorted(studies, key=lambda s: tag(s, "0020000D")), len(list(blobs.rglob("*.dcm")))


def test_bad_input_over_http(archive: Archive) -> None:
    """Each bad request gets its status and failure dataset, and nothing else changes."""
    session, base = archive.session, f"{archive.server.base}/dicomweb"
    before = _snapshot(archive)
    boundary = "bad-input-boundary"
    stow_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def body(*parts: bytes) -> bytes:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        return b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()

    def post(data: bytes, path: str = "/studies", ctype: str = stow_type) -> requests.Response:
        return session.post(base + path, data=data, headers={"Content-Type": ctype})

    def failures(r: requests.Response) -> list[int]:
        return [tag(f, "00081197") for f in r.json()["00081198"].get("Value", [])]

    not_dicom = post(body(b"this is not DICOM at all"))
    assert not_dicom.status_code == 409 and failures(not_dicom) == [0xC000]
    assert not_dicom.headers["content-type"].startswith("application/dicom+json")
    new = encoded(archive.expected.datasets[0])
    truncated = post(body(new[: len(new) // 2]))
    assert truncated.status_code == 409 and failures(truncated) == [0xC000]
    no_uid = dcmread(io.BytesIO(new))
    del no_uid.SOPInstanceUID
    missing = post(body(encoded(no_uid)))
    assert missing.status_code == 409 and failures(missing) == [0xC000]
    first = archive.expected.datasets[0]
    other_study = make_instance(f"{ROOT}.99", f"{ROOT}.99.1", f"{ROOT}.99.1.1")
    wrong_study = post(body(other_study), f"/studies/{first.StudyInstanceUID}")
    assert wrong_study.status_code == 409 and failures(wrong_study) == [0xA900]
    assert tag(wrong_study.json()["00081198"]["Value"][0], "00081155") == f"{ROOT}.99.1.1"
    assert post(b"{}", ctype="application/json").status_code == 415
    assert post(body(other_study), ctype=stow_type.replace("dicom", "dicom+xml")).status_code == 415
    assert post(b"--no-such-boundary\r\n").status_code == 400
    series = f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    for path in (
        f"/studies/{ROOT}.404",
        f"/studies/{ROOT}.404/metadata",
        f"{series}/instances/{ROOT}.404",
        f"{series}/instances/{ROOT}.404/frames/1",
        f"{series}/instances/{ROOT}.404/rendered",
        f"/studies/{first.StudyInstanceUID}/series/{ROOT}.404/metadata",
    ):
        assert session.get(base + path).status_code == 404, path
    assert _snapshot(archive) == before
