"""The demo's images: one study per completed order, made from the demo Bundle,
and what the archive makes of them once stored (QIDO-RS, the ImagingStudy
links, a rendered radiograph from its RLE file)."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomweb.demo_images import (
    CT_IMAGE,
    DX_IMAGE,
    MR_IMAGE,
    US_IMAGE,
    DemoStudy,
    demo_studies,
    load_demo_images,
    study_instances,
)
from fhir_server.demo import demo_bundle, load_demo
from tests.dicomweb.archive_app import fast_settings, running, settled

NOW = datetime.fromisoformat("2026-12-01T10:00:00+00:00")
CHEST = {"CT Chest", "XR Chest 2 Views"}  # the demo's procedures that image the chest


def _procedure_of(bundle: dict[str, Any], accession: str) -> str:
    """The procedure display of the order with ``accession``."""
    (order,) = (
        r
        for r in _by_url(bundle).values()
        if r["resourceType"] == "ServiceRequest" and r["identifier"][0]["value"] == accession
    )
    return str(order["code"]["coding"][0]["display"])


def _by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _expected_orders(bundle: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Accession number → (patient, appointment start) of each completed order."""
    resources = _by_url(bundle)
    starts = {
        a["basedOn"][0]["reference"]: a["start"]
        for a in resources.values()
        if a["resourceType"] == "Appointment"
    }
    return {
        r["identifier"][0]["value"]: (resources[r["subject"]["reference"]], starts[url])
        for url, r in resources.items()
        if r["resourceType"] == "ServiceRequest" and r["status"] == "completed"
    }


def test_one_study_per_completed_order_with_its_patient_and_time() -> None:
    bundle = demo_bundle(now=NOW)
    expected = _expected_orders(bundle)
    studies = demo_studies(bundle)
    assert {s.accession for s in studies} == set(expected)
    assert len(studies) >= 4  # the demo has orders that were done, of several modalities
    for study in studies:
        patient, start = expected[study.accession]
        identifier = patient["identifier"][0]
        assert (study.mrn, study.mrn_system) == (identifier["value"], identifier["system"])
        assert study.family == patient["name"][0]["family"]
        assert study.sex == {"female": "F", "male": "M"}[patient["gender"]]
        assert study.birth_date == patient["birthDate"].replace("-", "")
        assert study.started == datetime.fromisoformat(start.replace("Z", "+00:00"))


def _study(modality: str, procedure: str, body_part: str) -> DemoStudy:
    return DemoStudy(
        mrn="MRN1",
        mrn_system="urn:oid:1.2.3",
        family="Müller",
        given="Anna",
        sex="F",
        birth_date="19700101",
        accession=f"ACC-{modality}",
        procedure_code="00000-0",
        procedure=procedure,
        modality=modality,
        body_part=body_part,
        started=NOW,
    )


@pytest.mark.parametrize(
    ("modality", "procedure", "body_part", "sop_class", "syntax", "series", "count"),
    [
        ("CT", "CT Chest", "CHEST", CT_IMAGE, ExplicitVRLittleEndian, 2, 20),
        ("CT", "CT Head", "HEAD", CT_IMAGE, ExplicitVRLittleEndian, 2, 20),
        ("MR", "MR Brain", "HEAD", MR_IMAGE, ExplicitVRLittleEndian, 2, 16),
        ("DX", "XR Chest 2 Views", "CHEST", DX_IMAGE, RLELossless, 1, 2),
        ("US", "US Abdomen", "ABDOMEN", US_IMAGE, ExplicitVRLittleEndian, 1, 4),
    ],
)
def test_instances_of_each_modality(
    modality: str,
    procedure: str,
    body_part: str,
    sop_class: str,
    syntax: str,
    series: int,
    count: int,
) -> None:
    study = _study(modality, procedure, body_part)
    files = study_instances(study)
    assert files == study_instances(study)  # the same bytes every time
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    assert len(datasets) == count
    assert len({ds.SeriesInstanceUID for ds in datasets}) == series
    assert len({ds.SOPInstanceUID for ds in datasets}) == count
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class
        assert (ds.Modality, ds.BodyPartExamined) == (modality, body_part)
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("MRN1", "urn:oid:1.2.3")
        assert str(ds.PatientName) == "Müller^Anna"
        assert (ds.AccessionNumber, ds.StudyDescription) == (study.accession, procedure)
        (code,) = ds.ProcedureCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("00000-0", "LN")
        assert (ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC) == (
            "20261201",
            "100000",
            "+0000",
        )
        pixels = ds.pixel_array
        assert pixels.shape == (128, 128)
        assert len(np.unique(pixels)) > 2  # an image, not a blank
        assert int(pixels.max()) < 2**ds.BitsStored


def test_slices_differ_through_the_volume() -> None:
    files = study_instances(_study("CT", "CT Chest", "CHEST"))
    first, middle = (pydicom.dcmread(io.BytesIO(files[i])) for i in (0, 4))
    assert not np.array_equal(first.pixel_array, middle.pixel_array)
    assert first.ImagePositionPatient[2] != middle.ImagePositionPatient[2]


async def test_stored_demo_images_are_linked_and_served(tmp_path: Path) -> None:
    bundle = demo_bundle(now=NOW)
    expected = _expected_orders(bundle)
    async with running(fast_settings(tmp_path)) as (app, client):
        assert await load_demo(app.state.services, bundle) > 0
        stored = await load_demo_images(app.state.dicomweb.ingest, bundle)
        assert stored == sum(len(study_instances(s)) for s in demo_studies(bundle))
        await settled(app)

        studies = (await client.get("/dicomweb/studies")).json()
        assert {s["00080050"]["Value"][0] for s in studies} == set(expected)
        assert all(s["00080201"]["Value"] == ["+0000"] for s in studies)

        for accession, (patient, start) in expected.items():
            found = await client.get("/fhir/ImagingStudy", params={"identifier": accession})
            (entry,) = found.json()["entry"]
            imaging = entry["resource"]
            mrn = patient["identifier"][0]
            owner = await client.get(
                "/fhir/Patient", params={"identifier": f"{mrn['system']}|{mrn['value']}"}
            )
            assert (
                imaging["subject"]["reference"]
                == f"Patient/{owner.json()['entry'][0]['resource']['id']}"
            )
            order = await client.get("/fhir/ServiceRequest", params={"identifier": accession})
            order_id = order.json()["entry"][0]["resource"]["id"]
            assert imaging["basedOn"] == [{"reference": f"ServiceRequest/{order_id}"}]
            ordered = order.json()["entry"][0]["resource"]["code"]["coding"][0]
            (performed,) = imaging["procedureCode"]
            assert performed["coding"] == [
                {
                    "system": "http://loinc.org",
                    "code": ordered["code"],
                    "display": ordered["display"],
                }
            ]
            assert datetime.fromisoformat(imaging["started"]) == datetime.fromisoformat(
                start.replace("Z", "+00:00")
            )

        chest = await client.get(
            "/fhir/ImagingStudy", params={"bodysite": "http://snomed.info/sct|816094009"}
        )
        chest_orders = {a for a in expected if _procedure_of(bundle, a) in CHEST}
        found_accessions = {
            i["value"]
            for e in chest.json()["entry"]
            for i in e["resource"]["identifier"]
            if "type" in i
        }
        assert found_accessions == chest_orders and chest_orders

        radiograph = next(s for s in studies if s["00080061"]["Value"] == ["DX"])
        study_uid = radiograph["0020000D"]["Value"][0]
        (instance, *_) = (await client.get(f"/dicomweb/studies/{study_uid}/instances")).json()
        series_uid = instance["0020000E"]["Value"][0]
        sop_uid = instance["00080018"]["Value"][0]
        url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered"
        rendered = await client.get(url, headers={"Accept": "image/jpeg"})
        assert rendered.status_code == 200
        assert rendered.headers["content-type"] == "image/jpeg"
        assert rendered.content[:2] == b"\xff\xd8"
