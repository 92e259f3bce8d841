"""What DICOM allows and FHIR does not, on the way to an ImagingStudy: values that
would fail the resource's validation (and freeze its study's sync for ever) are
normalised or left out; padding is not part of a value; the Endpoint follows the
server's base URL; a study whose Patient was deleted gets one again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomweb.imaging_study import StudyLinks, coded_concept, fhir_code, map_study
from fhir_server.storage.dicom_port import BlobLocation, InstanceRow, SeriesRow, StudyRow
from tests.dicomweb.archive_app import (
    DEFAULT_PATIENT_SYSTEM,
    eventually,
    fast_settings,
    imaging_study,
    running,
    settled,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, with_values

TOO_BIG = 2**31  # one past FHIR's unsignedInt


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("CT", "CT"),
        ("C  T", "C T"),
        (" CT ", "CT"),
        ("A\tB\nC", "A B C"),
        ("   ", None),
        (None, None),
    ],
)
def test_a_dicom_value_as_a_fhir_code(text: str | None, code: str | None) -> None:
    assert fhir_code(text) == code


def test_a_code_sequence_item_with_inner_spaces_is_a_valid_code() -> None:
    item = {
        "00080100": {"vr": "SH", "Value": ["A  B"]},
        "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
    }
    assert coded_concept(item) == {"coding": [{"code": "A B"}]}
    assert coded_concept({"00080100": {"vr": "SH", "Value": ["  "]}}) is None


def _instance(uid: str, number: int | None) -> InstanceRow:
    attrs = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}
    location = BlobLocation("k", 1, "s")
    return InstanceRow(uid, "1.2.1", "1.2", attrs, location, "1.2.840.10008.1.2.1", number, {})


def test_numbers_beyond_unsigned_int_and_odd_codes_are_left_out_or_normalised() -> None:
    study = StudyRow(
        "1.2",
        {"00080050": {"vr": "SH", "Value": ["  A2 "]}},
        ("C  T", "  "),
        1,
        2,
        "p1",
    )
    series = SeriesRow(
        "1.2.1",
        "1.2",
        {
            "00080060": {"vr": "CS", "Value": ["C  T"]},
            "00200011": {"vr": "IS", "Value": [TOO_BIG]},
        },
        2,
        1,
    )
    rows = [_instance("1.2.1.1", 99_999_999_999), _instance("1.2.1.2", 3)]
    mapped: dict[str, Any] = map_study(study, [series], rows, StudyLinks("Patient/p1"))
    assert mapped["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "C T"}
    ]
    (only,) = mapped["series"]
    assert only["modality"]["code"] == "C T" and "number" not in only
    # the numbered instance first, the one whose number FHIR cannot hold after it
    assert [(i["uid"], i.get("number")) for i in only["instance"]] == [
        ("1.2.1.2", 3),
        ("1.2.1.1", None),
    ]
    assert mapped["identifier"][1]["value"] == "A2"


async def test_values_fhir_refuses_do_not_keep_a_study_from_its_imaging_study(
    tmp_path: Path,
) -> None:
    body = with_values(
        make_instance("8.1", "8.1.1", "8.1.1.1", patient_id="PAD-1", accession="A2"),
        PatientID=" PAD-1 ",
        AccessionNumber=" A2 ",
        Modality="C  T",
        SeriesNumber=TOO_BIG,
        InstanceNumber=99_999_999_999,
    )
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        stored = await client.post(
            "/dicomweb/studies", content=multipart(body), headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200, stored.text
        await settled(app)
        study = await imaging_study(client, "8.1")
        assert study is not None, "the study's ImagingStudy was never written"
        assert study["series"][0]["modality"]["code"] == "C T"
        assert "number" not in study["series"][0]
        assert "number" not in study["series"][0]["instance"][0]
        acsn = [i["value"] for i in study["identifier"] if "type" in i]
        assert acsn == ["A2"]
        patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
        assert patient["identifier"] == [{"system": DEFAULT_PATIENT_SYSTEM, "value": "PAD-1"}]
        found = await client.get("/dicomweb/studies", params={"AccessionNumber": "A2"})
        assert [s["0020000D"]["Value"][0] for s in found.json()] == ["8.1"]


async def test_the_endpoint_follows_the_servers_base_url(tmp_path: Path) -> None:
    body = multipart(make_instance("8.2", "8.2.1", "8.2.1.1"))
    headers = {"Content-Type": STOW_TYPE}
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        assert (await client.post("/dicomweb/studies", content=body, headers=headers)).is_success
        await settled(app)
        before = (await client.get("/fhir/Endpoint/radhub-dicomweb")).json()
    moved = fast_settings(tmp_path / "data", base_url="https://pacs.example.org")
    async with running(moved) as (app, client):
        again = multipart(make_instance("8.2", "8.2.1", "8.2.1.2", number=2))
        assert (await client.post("/dicomweb/studies", content=again, headers=headers)).is_success
        await settled(app)
        after = (await client.get("/fhir/Endpoint/radhub-dicomweb")).json()
    assert before["address"] != after["address"] == "https://pacs.example.org/dicomweb"
    assert after["meta"]["versionId"] != before["meta"]["versionId"]


async def test_a_study_whose_patient_was_deleted_gets_one_again(tmp_path: Path) -> None:
    headers = {"Content-Type": STOW_TYPE}
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        first = multipart(make_instance("8.3", "8.3.1", "8.3.1.1", patient_id="DEL-1"))
        assert (await client.post("/dicomweb/studies", content=first, headers=headers)).is_success
        await settled(app)
        study = await imaging_study(client, "8.3")
        assert study is not None
        gone = study["subject"]["reference"]
        assert (await client.delete(f"/fhir/{gone}")).status_code in (200, 204)

        more = multipart(make_instance("8.3", "8.3.1", "8.3.1.2", patient_id="DEL-1", number=2))
        assert (await client.post("/dicomweb/studies", content=more, headers=headers)).is_success

        async def rewritten() -> dict[str, Any] | None:
            found = await imaging_study(client, "8.3")
            return found if found and found["numberOfInstances"] == 2 else None

        study = await eventually(rewritten, "the study's second instance in its ImagingStudy")
        subject = study["subject"]["reference"]
        assert subject != gone
        patient = await client.get(f"/fhir/{subject}")
        assert patient.status_code == 200
        assert patient.json()["identifier"][0]["value"] == "DEL-1"
        await settled(app)
        row = await app.state.dicomweb.index.study("8.3")
        assert row is not None and f"Patient/{row.patient_ref}" == subject


def _with_image_laterality(uid: str, side: str | None) -> InstanceRow:
    row = _instance(uid, 1)
    if side is not None:
        row.attrs["00200062"] = {"vr": "CS", "Value": [side]}
    return row


@pytest.mark.parametrize(
    ("series_side", "image_sides", "code"),
    [
        ("L", ["R", "R"], "7771000"),  # the series' own Laterality first
        (None, ["R", "R"], "24028007"),  # else the ImageLaterality its images share
        (None, ["B"], "51440002"),
        (None, ["R", "L"], None),  # images of both sides: the series has none
        (None, ["R", None], None),
        (None, ["U"], None),  # unpaired: no SNOMED CT laterality
        (None, [], None),
    ],
)
def test_series_laterality(
    series_side: str | None, image_sides: list[str | None], code: str | None
) -> None:
    attrs: dict[str, Any] = {"00080060": {"vr": "CS", "Value": ["MG"]}}
    if series_side is not None:
        attrs["00200060"] = {"vr": "CS", "Value": [series_side]}
    series = SeriesRow("1.2.1", "1.2", attrs, len(image_sides), 1)
    rows = [_with_image_laterality(f"1.2.1.{n}", side) for n, side in enumerate(image_sides)]
    study = StudyRow("1.2", {}, ("MG",), 1, len(image_sides), "p1")
    (mapped,) = map_study(study, [series], rows, StudyLinks("Patient/p1"))["series"]
    assert (mapped.get("laterality") or {}).get("code") == code
