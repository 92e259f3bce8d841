"""Orthanc's DICOMweb plugin as an independent client of a real ``radhub serve``.

One Orthanc process (see ``orthanc_peer``) talks to radhub through its REST
API's client calls: ``/dicom-web/servers/{name}/stow``, ``qido``, ``get``,
``retrieve``, ``wado`` and ``delete``. The instances are generated (two
studies, several series and modalities, a multi-frame CT) plus three of
pydicom's bundled compressed files (JPEG 2000 lossless, RLE, JPEG baseline)
given their own UIDs; "originals" are their bytes, and every retrieval is
checked against them by SHA-256.

Orthanc 1.7's STOW-RS client joins two UUIDs into its multipart boundary (73
characters, over RFC 2046's 70); radhub accepts it (``dicomweb.multipart``).
Orthanc 1.7's ``/qido`` call drops numeric values when it simplifies answers
(only strings and person names survive), so numbers are checked in the raw
answers of ``/get``.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, MRImageStorage, UltrasoundImageStorage

from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import make_instance, split_multipart
from tests.e2e.conftest import ServerProcess, cli
from tests.e2e.orthanc_peer import JobFailed, OrthancProcess, Relay, require_orthanc

pytestmark = [pytest.mark.peer, pytest.mark.slow]

ROOT = "1.2.826.0.1.3680043.10.7"
SOP_CLASS = {"MR": MRImageStorage, "US": UltrasoundImageStorage}
# (patient id, name, date, [(modality, instances, frames per instance)])
STUDIES = [
    ("P1", "Smith^John", "20240110", [("CT", 3, 1), ("CT", 1, 4), ("MR", 2, 1)]),
    ("P2", "Jones^Mary", "20240305", [("US", 1, 1)]),
]
COMPRESSED = ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class Instance:
    raw: bytes
    ds: Dataset

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def uids(self) -> tuple[str, str, str]:
        return (self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID, self.ds.SOPInstanceUID)


def _encoded(ds: Dataset) -> Instance:
    out = io.BytesIO()
    ds.save_as(out)
    raw = out.getvalue()
    return Instance(raw, dcmread(io.BytesIO(raw)))


def generate(root: str, tag: str) -> list[Instance]:
    """The generated studies, then one study of the compressed files, under ``root``."""
    out = []
    for s, (patient, name, date, series) in enumerate(STUDIES, start=1):
        for n, (modality, count, frames) in enumerate(series, start=1):
            for i in range(1, count + 1):
                uid = f"{root}.{s}.{n}"
                raw = make_instance(
                    f"{root}.{s}",
                    uid,
                    f"{uid}.{i}",
                    patient_id=f"{tag}{patient}",
                    name=name,
                    modality=modality,
                    date=date,
                    accession=f"{tag}A{s}",
                    number=i,
                    frames=frames,
                )
                ds = dcmread(io.BytesIO(raw))
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS.get(
                    modality, ds.SOPClassUID
                )
                ds.SeriesNumber, ds.SeriesDescription = n, f"{modality} series {n}"
                out.append(_encoded(ds))
    for n, name in enumerate(COMPRESSED, start=1):
        ds = dcmread(bundled(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{root}.9", f"{root}.9.{n}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{root}.9.{n}.1")
        ds.PatientID, ds.PatientName = f"{tag}P9", "Compressed^Samples"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "19600101", "O", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20230115", "080000", "9"
        ds.AccessionNumber, ds.StudyDescription = f"{tag}A9", "compressed samples"
        out.append(_encoded(ds))
    return out


def by_study(instances: list[Instance]) -> dict[str, list[Instance]]:
    out: dict[str, list[Instance]] = {}
    for item in instances:
        out.setdefault(item.ds.StudyInstanceUID, []).append(item)
    return out


def by_series(instances: list[Instance]) -> dict[str, list[Instance]]:
    out: dict[str, list[Instance]] = {}
    for item in instances:
        out.setdefault(item.ds.SeriesInstanceUID, []).append(item)
    return out


def hashes(instances: list[Instance]) -> dict[str, str]:
    return {item.ds.SOPInstanceUID: item.sha for item in instances}


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def store(http: httpx.Client, instances: list[Instance]) -> None:
    """STOW-RS straight to radhub (the way the other clients are tested)."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + i.raw + b"\r\n" for i in instances) + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    answer = http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


@dataclass
class Peers:
    radhub: ServerProcess
    token: str
    http: httpx.Client  # to radhub, with the token
    orthanc: OrthancProcess
    main: list[Instance]  # what radhub holds from the start

    def radhub_files(self, study_uids: list[str]) -> dict[str, str]:
        """SHA-256 of every instance radhub serves with WADO-RS, by SOP Instance UID."""
        out = {}
        for uid in study_uids:
            answer = self.http.get(f"/dicomweb/studies/{uid}", headers={"Accept": ANY_TS})
            assert answer.status_code == 200, answer.text
            for part in split_multipart(answer.content, answer.headers["content-type"]):
                sop = dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID
                out[sop] = hashlib.sha256(part).hexdigest()
        return out

    def radhub_studies(self) -> set[str]:
        answer = self.http.get("/dicomweb/studies", params={"limit": "1000"})
        assert answer.status_code == 200, answer.text
        return {value(item, "0020000D") for item in answer.json()}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    binary, plugin = require_orthanc()
    data = tmp_path_factory.mktemp("orthanc-client") / "data"
    radhub = ServerProcess(data)
    radhub.start()
    orthanc: OrthancProcess | None = None
    http = None
    try:
        token = cli("token", "--data-dir", str(data), "--scope", "system/*.cruds")
        http = httpx.Client(
            base_url=radhub.base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        main = generate(f"{ROOT}.1", "M")
        store(http, main)
        orthanc = OrthancProcess(binary, plugin)
        orthanc.wait_ready()
        orthanc.add_server("radhub", f"{radhub.base}/dicomweb/", token, HasDelete="1")
        yield Peers(radhub, token, http, orthanc, main)
    finally:
        if orthanc is not None:
            orthanc.close()
        if http is not None:
            http.close()
        radhub.kill()


def test_orthanc_stows_whole_studies_byte_for_byte(peers: Peers) -> None:
    """Orthanc STOWs whole studies with its own multipart form (a 73-character
    boundary among it); radhub holds exactly those instances, unchanged."""
    orthanc, sent = peers.orthanc, generate(f"{ROOT}.2", "S")
    orthanc.clear()
    studies = sorted({orthanc.upload(item.raw)["ParentStudy"] for item in sent})
    assert orthanc.stored() == hashes(sent)  # Orthanc keeps the files as they came
    uids = sorted(by_study(sent))
    assert not peers.radhub_studies() & set(uids)
    job = orthanc.job("radhub", "stow", {"Resources": studies})
    assert job["State"] == "Success", job
    assert peers.radhub_studies() >= set(uids)
    assert peers.radhub_files(uids) == hashes(sent)


def test_qido_studies_through_orthanc(peers: Peers) -> None:
    orthanc, main = peers.orthanc, peers.main
    studies = by_study(main)

    def mine(answer: httpx.Response) -> dict[str, dict[str, Any]]:
        assert answer.status_code == 200, answer.text
        return {
            uid: item
            for item in answer.json()
            if (uid := item["0020000D"]["Value"]).startswith(f"{ROOT}.1.")
        }

    wanted = {"Uri": "/studies", "Arguments": {"includefield": "StudyDescription"}}
    found = mine(orthanc.client("radhub", "qido", wanted))
    assert set(found) == set(studies)
    for uid, item in found.items():
        first = studies[uid][0].ds
        assert item["00100020"]["Value"] == first.PatientID
        assert item["00100010"]["Value"] == str(first.PatientName)  # from PN's Alphabetic
        assert item["00080020"]["Value"] == first.StudyDate
        assert item["00080050"]["Value"] == first.get("AccessionNumber", "")
        assert item["00081030"].get("Value") == first.get("StudyDescription")
        assert item["00080061"]["Value"] in {i.ds.Modality for i in studies[uid]}
        assert item["00081190"]["Value"].endswith(f"/dicomweb/studies/{uid}")
        assert item["00201208"]["vr"] == "IS"  # Orthanc 1.7 drops the number itself

    def uids(**arguments: str) -> set[str]:
        body = {"Uri": "/studies", "Arguments": arguments}
        return set(mine(orthanc.client("radhub", "qido", body)))

    def where(keep: Any) -> set[str]:
        return {uid for uid, items in studies.items() if any(keep(i.ds) for i in items)}

    p1 = where(lambda ds: ds.PatientID == "MP1")
    assert p1 and uids(PatientID="MP1") == p1
    assert uids(**{"00100020": "MP1"}) == p1  # a tag instead of a keyword
    assert uids(PatientName="smith*") == where(lambda ds: str(ds.PatientName) == "Smith^John")
    march = where(lambda ds: "20240301" <= ds.StudyDate <= "20240331")
    assert march and uids(StudyDate="20240301-20240331") == march
    assert uids(ModalitiesInStudy="MR") == where(lambda ds: ds.Modality == "MR")
    assert uids(AccessionNumber="MA2") == where(lambda ds: ds.get("AccessionNumber") == "MA2")

    raw = orthanc.client("radhub", "get", {"Uri": "/studies", "Arguments": {"PatientID": "MP1"}})
    assert raw.headers["content-type"].startswith("application/dicom+json")
    (item,) = raw.json()
    assert sorted(item["00080061"]["Value"]) == ["CT", "MR"]
    assert value(item, "00201206") == 3 and value(item, "00201208") == 6


def test_qido_series_and_instances_through_orthanc(peers: Peers) -> None:
    orthanc, main = peers.orthanc, peers.main
    for study_uid, items in by_study(main).items():
        answer = orthanc.client("radhub", "qido", {"Uri": f"/studies/{study_uid}/series"})
        found = {item["0020000E"]["Value"]: item for item in answer.json()}
        members = by_series(items)
        assert set(found) == set(members)
        for series_uid, item in found.items():
            ds = members[series_uid][0].ds
            assert item["00080060"]["Value"] == ds.Modality
            assert item["0008103E"].get("Value") == ds.get("SeriesDescription")
            assert item["00081190"]["Value"].endswith(f"/series/{series_uid}")
            path = f"/studies/{study_uid}/series/{series_uid}/instances"
            instances = orthanc.client("radhub", "qido", {"Uri": path}).json()
            expected = {m.ds.SOPInstanceUID: m.ds for m in members[series_uid]}
            assert {i["00080018"]["Value"] for i in instances} == set(expected)
            for instance in instances:
                sop = instance["00080018"]["Value"]
                assert instance["00080016"]["Value"] == expected[sop].SOPClassUID
    ct = orthanc.client("radhub", "qido", {"Uri": "/series", "Arguments": {"Modality": "CT"}})
    mine = {u for i in ct.json() if (u := i["0020000E"]["Value"]).startswith(f"{ROOT}.1.")}
    assert mine == {uid for uid, m in by_series(main).items() if m[0].ds.Modality == "CT"}
    one = main[4].ds
    hit = orthanc.client(
        "radhub", "qido", {"Uri": "/instances", "Arguments": {"SOPInstanceUID": one.SOPInstanceUID}}
    ).json()
    assert [(h["0020000D"]["Value"], h["0020000E"]["Value"]) for h in hit] == [
        (one.StudyInstanceUID, one.SeriesInstanceUID)
    ]


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_into_empty_orthanc(peers: Peers, level: str) -> None:
    """WADO-RS by Orthanc (``/retrieve``): it ends up with every instance, identical."""
    orthanc, main = peers.orthanc, peers.main
    orthanc.clear()
    keys = ("Study", "Series", "Instance")[: ("study", "series", "instance").index(level) + 1]
    resources = [dict(zip(keys, item.uids, strict=False)) for item in main]
    unique = [dict(r) for r in {tuple(r.items()) for r in resources}]
    job = orthanc.run("radhub", "retrieve", {"Resources": unique})
    assert job["Content"]["ReceivedInstancesCount"] == str(len(main))
    assert orthanc.stored() == hashes(main)


def test_wado_job_retrieves_one_series(peers: Peers) -> None:
    orthanc, main = peers.orthanc, peers.main
    orthanc.clear()
    study, series, _ = main[3].uids  # the multi-frame CT's series
    orthanc.run("radhub", "wado", {"Uri": f"/studies/{study}/series/{series}"})
    assert orthanc.stored() == hashes(by_series(main)[series])


def test_retrieve_transcoded_on_request(peers: Peers) -> None:
    """Orthanc asks for Explicit VR Little Endian: the JPEG 2000 instance arrives
    decoded, with the same pixels."""
    orthanc = peers.orthanc
    original = next(
        i for i in peers.main if i.ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    )
    orthanc.clear()
    study, series, sop = original.uids
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    resource = {"Study": study, "Series": series, "Instance": sop}
    orthanc.run("radhub", "retrieve", {"Resources": [resource], "HttpHeaders": {"Accept": accept}})
    (orthanc_id,) = orthanc.http.get("/instances").json()
    got = dcmread(io.BytesIO(orthanc.http.get(f"/instances/{orthanc_id}/file").content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.SOPInstanceUID == sop
    assert np.array_equal(got.pixel_array, original.ds.pixel_array)


def test_metadata_through_orthanc(peers: Peers) -> None:
    orthanc, main = peers.orthanc, peers.main
    for study_uid, items in by_study(main).items():
        answer = orthanc.client("radhub", "get", {"Uri": f"/studies/{study_uid}/metadata"})
        assert answer.headers["content-type"].startswith("application/dicom+json")
        expected = {i.ds.SOPInstanceUID: i.ds for i in items}
        meta = answer.json()
        assert {value(m, "00080018") for m in meta} == set(expected)
        for item in meta:
            ds = expected[value(item, "00080018")]
            assert value(item, "00280010") == ds.Rows and value(item, "00280011") == ds.Columns
            assert "BulkDataURI" in item["7FE00010"]
    study, series, sop = main[0].uids
    path = f"/studies/{study}/series/{series}/metadata"
    series_meta = orthanc.client("radhub", "get", {"Uri": path}).json()
    assert {value(m, "00080018") for m in series_meta} == set(hashes(by_series(main)[series]))
    path = f"/studies/{study}/series/{series}/instances/{sop}/metadata"
    (one,) = orthanc.client("radhub", "get", {"Uri": path}).json()
    assert value(one, "00100010") == {"Alphabetic": str(main[0].ds.PatientName)}


def test_rendered_and_frames_through_orthanc(peers: Peers) -> None:
    orthanc, main = peers.orthanc, peers.main
    multi = main[3]
    assert int(multi.ds.NumberOfFrames) == 4
    base = "/studies/{}/series/{}/instances/{}".format(*multi.uids)
    for accept, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        for path in (f"{base}/rendered", f"{base}/frames/2/rendered"):
            body = {"Uri": path, "HttpHeaders": {"Accept": accept}}
            answer = orthanc.client("radhub", "get", body)
            assert answer.status_code == 200 and answer.headers["content-type"] == accept
            image = Image.open(io.BytesIO(answer.content))
            assert image.format == fmt and image.size == (multi.ds.Columns, multi.ds.Rows)
    frames = orthanc.client("radhub", "get", {"Uri": f"{base}/frames/1,3"})
    pixels = multi.ds.pixel_array
    parts = split_multipart(frames.content, frames.headers["content-type"])
    assert parts == [pixels[0].tobytes(), pixels[2].tobytes()]


def test_delete_through_orthanc(peers: Peers) -> None:
    """The plugin's ``/delete`` (``HasDelete``): radhub drops a series, then a study."""
    orthanc = peers.orthanc
    doomed = [i for i in generate(f"{ROOT}.3", "D") if i.ds.StudyInstanceUID == f"{ROOT}.3.1"]
    store(peers.http, doomed)
    study = f"{ROOT}.3.1"
    gone, *kept = sorted(by_series(doomed))
    body = {"Level": "Series", "StudyInstanceUID": study, "SeriesInstanceUID": gone}
    assert orthanc.client("radhub", "delete", body).status_code == 200
    left = orthanc.client("radhub", "qido", {"Uri": f"/studies/{study}/series"}).json()
    assert sorted(item["0020000E"]["Value"] for item in left) == kept
    body = {"Level": "Study", "StudyInstanceUID": study}
    assert orthanc.client("radhub", "delete", body).status_code == 200
    assert peers.http.get(f"/dicomweb/studies/{study}/metadata").status_code == 404
    assert study not in peers.radhub_studies()


@pytest.mark.parametrize("kind", ["expired", "foreign"])
def test_bad_token_gets_401_and_changes_nothing(peers: Peers, kind: str, tmp_path: Path) -> None:
    """An Orthanc holding an expired token, or one signed by another server's key:
    radhub answers every call 401 with a Bearer challenge; Orthanc reports each
    failure; nothing is stored or deleted on either side."""
    orthanc, main = peers.orthanc, peers.main
    scope = ("--scope", "system/*.cruds")
    if kind == "expired":
        token = cli("token", "--data-dir", str(peers.radhub.data_dir), *scope, "--ttl=-60")
    else:  # a key of its own: the signature is wrong, issuer and audience right
        other = str(tmp_path / "other")
        token = cli("token", "--data-dir", other, *scope, "--base-url", peers.radhub.base)
    study = main[0].ds.StudyInstanceUID
    orthanc.clear()
    newcomer = generate(f"{ROOT}.4.{['expired', 'foreign'].index(kind) + 1}", "X")[0]
    newcomer_study = orthanc.upload(newcomer.raw)["ParentStudy"]
    relay = Relay(peers.radhub.port)
    try:
        orthanc.add_server(kind, f"http://127.0.0.1:{relay.port}/dicomweb/", token, HasDelete="1")
        assert orthanc.client(kind, "qido", {"Uri": "/studies"}).status_code == 401
        meta = orthanc.client(kind, "get", {"Uri": f"/studies/{study}/metadata"})
        assert meta.status_code == 401
        delete = orthanc.client(kind, "delete", {"Level": "Study", "StudyInstanceUID": study})
        assert delete.status_code == 401
        stow = orthanc.job(kind, "stow", {"Resources": [newcomer_study]})
        assert stow["State"] == "Failure"
        assert stow["Content"]["FunctionErrorCode"] == 29  # Orthanc's "bad credentials"
        with pytest.raises(JobFailed):  # Orthanc 1.7 reports a network protocol error
            orthanc.run(kind, "retrieve", {"Resources": [{"Study": study}]})
    finally:
        relay.close()
    assert relay.statuses() == [401] * 5
    challenges = b"".join(relay.received).count(b"www-authenticate: Bearer")
    assert challenges == 5
    assert orthanc.stored() == hashes([newcomer])  # nothing retrieved
    assert newcomer.ds.StudyInstanceUID not in peers.radhub_studies()  # nothing stored
    assert peers.radhub_files([study]) == hashes(by_study(main)[study])  # nothing deleted
