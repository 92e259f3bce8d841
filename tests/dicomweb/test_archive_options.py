"""The archive's ``radhub serve`` options: parsed from the command line and the
environment, and in effect in the running app (real ASGI stack, real store)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import pydicom
import pytest

from fhir_server.cli import build_parser, settings_from
from fhir_server.settings import Settings
from tests.dicomweb.archive_app import (
    DEFAULT_PATIENT_SYSTEM,
    emulated_mongo,
    fast_settings,
    running,
    settled,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

FAILED, REASON = "00081198", "00081197"


def serve_settings(*argv: str) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_serve_options_reach_the_settings() -> None:
    settings = serve_settings(
        "--dicom-overwrite",
        "--default-patient-system",
        "urn:oid:1.2.3",
        "--qido-max-results",
        "25",
        "--validation-workers",
        "0",
        "--audit-in-process",
        "--patient-issuer",
        "HOSP_A=http://a.example/mrn",
        "--patient-issuer",
        " HOSP B = urn:oid:1.2.9",
        "--dicom-timezone",
        "Europe/Berlin",
    )
    assert settings.dicom_timezone == "Europe/Berlin"
    assert settings.patient_issuers == (
        ("HOSP_A", "http://a.example/mrn"),
        ("HOSP B", "urn:oid:1.2.9"),
    )
    assert settings.dicom_overwrite is True
    assert settings.default_patient_system == "urn:oid:1.2.3"
    assert settings.qido_max_results == 25
    assert settings.validation_workers == 0
    assert settings.audit_process is False


def test_serve_option_defaults() -> None:
    settings, defaults = serve_settings(), Settings()
    assert settings.dicom_overwrite is False
    assert settings.default_patient_system == "urn:radhub:patient-id"
    assert settings.dicom_timezone is None
    assert settings.qido_max_results == defaults.qido_max_results == 1000
    assert settings.validation_workers == defaults.validation_workers
    assert settings.audit_process == defaults.audit_process == ((os.cpu_count() or 1) > 1)


def test_serve_options_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADHUB_DICOM_OVERWRITE", "1")
    monkeypatch.setenv("RADHUB_DEFAULT_PATIENT_SYSTEM", "urn:example:mrn")
    monkeypatch.setenv("RADHUB_QIDO_MAX_RESULTS", "7")
    monkeypatch.setenv("RADHUB_VALIDATION_WORKERS", "3")
    monkeypatch.setenv("RADHUB_AUDIT_IN_PROCESS", "1")
    monkeypatch.setenv("RADHUB_PATIENT_ISSUER", "A=urn:a,B=http://b.example/id")
    settings = serve_settings()
    assert settings.patient_issuers == (("A", "urn:a"), ("B", "http://b.example/id"))
    assert settings.audit_process is False
    assert settings.dicom_overwrite is True
    assert settings.default_patient_system == "urn:example:mrn"
    assert (settings.qido_max_results, settings.validation_workers) == (7, 3)
    assert serve_settings("--qido-max-results", "9").qido_max_results == 9  # the line wins


def test_max_decoded_bytes_option(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve_settings().max_decoded_bytes == Settings().max_decoded_bytes == 256 * 2**20
    assert serve_settings("--max-decoded-bytes", "1048576").max_decoded_bytes == 2**20
    monkeypatch.setenv("RADHUB_MAX_DECODED_BYTES", "4096")
    assert serve_settings().max_decoded_bytes == 4096


@pytest.mark.parametrize(
    "argv",
    [
        ("--qido-max-results", "0"),
        ("--validation-workers", "-1"),
        ("--qido-max-results", "x"),
        ("--max-decoded-bytes", "0"),
    ],
)
def test_bad_counts_are_refused(argv: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_settings(*argv)
    assert argv[0] in capsys.readouterr().err


async def stow(client: httpx.AsyncClient, *parts: bytes) -> httpx.Response:
    body = multipart(*parts)
    return await client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})


@pytest.mark.parametrize("overwrite", [False, True])
async def test_dicom_overwrite(tmp_path: Path, overwrite: bool) -> None:
    settings = fast_settings(tmp_path / "data", dicom_overwrite=overwrite)
    async with running(settings) as (_, client):
        first = make_instance("3.1", "3.1.1", "3.1.1.1", name="First^Name")
        second = make_instance("3.1", "3.1.1", "3.1.1.1", name="Second^Name")
        assert (await stow(client, first)).status_code == 200
        again = await stow(client, second)
        stored = await client.get(
            "/dicomweb/studies/3.1/series/3.1.1/instances/3.1.1.1",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        if overwrite:
            assert again.status_code == 200
            assert second in stored.content
        else:
            assert again.status_code == 409
            assert [f[REASON]["Value"][0] for f in again.json()[FAILED]["Value"]] == [0x0111]
            assert first in stored.content


@pytest.mark.parametrize("bad", ["HOSP", "=urn:x", "HOSP=local-name"])
def test_patient_issuer_needs_a_name_and_a_uri(bad: str) -> None:
    with pytest.raises(SystemExit):
        serve_settings("--patient-issuer", bad)


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "+01:00", "../etc/passwd"])
def test_dicom_timezone_is_an_iana_zone(bad: str) -> None:
    with pytest.raises(SystemExit):
        serve_settings("--dicom-timezone", bad)


async def test_dicom_timezone_gives_started_its_offset(tmp_path: Path) -> None:
    """A study sent without TimezoneOffsetFromUTC (most are) keeps its time in
    ``started`` at the site's offset of that day: summer time in July."""
    settings = fast_settings(tmp_path / "data", dicom_timezone="Europe/Berlin")
    async with running(settings) as (app, client):
        july = make_instance("4.9", "4.9.1", date="20240705")
        assert (await stow(client, july)).is_success
        await settled(app)
        study = (await client.get("/fhir/ImagingStudy/4.9")).json()
        assert study["started"] == "2024-07-05T10:15:00+02:00"
        found = await client.get("/fhir/ImagingStudy", params={"started": "gt2024-07-05T08:00:00Z"})
        assert [e["resource"]["id"] for e in found.json()["entry"]] == ["4.9"]


def _with_issuer(study: str, issuer: str, patient_id: str = "12345") -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_instance(study, f"{study}.1", patient_id=patient_id)))
    ds.IssuerOfPatientID = issuer
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_patient_ids_of_two_issuers_are_two_patients(tmp_path: Path) -> None:
    """PS3.3 C.7.1.1: a Patient ID is unique within its issuer only. A mapped local
    issuer takes its configured system; an unmapped one a namespace of its own."""
    mapped = (("HOSP_A", "http://a.example/mrn"),)
    settings = fast_settings(tmp_path / "data", patient_issuers=mapped)
    async with running(settings) as (app, client):
        parts = (_with_issuer("5.1", "HOSP_A"), _with_issuer("5.2", "HOSP_B"))
        assert (await stow(client, *parts)).status_code == 200
        await settled(app)
        identifiers = []
        for uid in ("5.1", "5.2"):
            study = (await client.get(f"/fhir/ImagingStudy/{uid}")).json()
            patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
            identifiers.append(patient["identifier"])
        assert identifiers == [
            [{"system": "http://a.example/mrn", "value": "12345"}],
            [{"system": "urn:radhub:issuer:HOSP_B", "value": "12345"}],
        ]


@pytest.mark.parametrize("backend", ["sqlite", "mongo"])
@pytest.mark.parametrize("patient_id", ["123,456", "123|456", "123$456"])
async def test_a_patient_id_with_search_separators_is_that_patient(
    tmp_path: Path, backend: str, patient_id: str
) -> None:
    """A Patient ID may hold a comma or a bar (LO allows them): the Patient is found by
    the whole ID, never by a piece of it in any system (which was someone else), and
    each study of the patient finds the same one."""
    settings = fast_settings(tmp_path / "data")
    store = emulated_mongo(settings) if backend == "mongo" else None
    async with running(settings, store) as (app, client):
        someone = {"system": "urn:example:other", "value": "456"}
        other = {"resourceType": "Patient", "id": "other", "identifier": [someone]}
        assert (await client.put("/fhir/Patient/other", json=other)).status_code == 201
        parts = [make_instance(uid, f"{uid}.1", patient_id=patient_id) for uid in ("7.1", "7.2")]
        assert (await stow(client, parts[0])).status_code == 200
        await settled(app)
        assert (await stow(client, parts[1])).status_code == 200
        await settled(app)
        subjects = set()
        for uid in ("7.1", "7.2"):
            study = (await client.get(f"/fhir/ImagingStudy/{uid}")).json()
            subjects.add(study["subject"]["reference"])
        (subject,) = subjects
        patient = (await client.get(f"/fhir/{subject}")).json()
        assert patient["identifier"] == [{"system": DEFAULT_PATIENT_SYSTEM, "value": patient_id}]


async def test_a_patient_named_in_three_scripts(tmp_path: Path) -> None:
    """The Patient the archive creates keeps the ideographic and phonetic names too,
    and the FHIR validation takes them (PS3.5 H.3.1's example name, UTF-8)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance("6.1", "6.1.1", patient_id="J-1")))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        assert (await stow(client, out.getvalue())).status_code == 200
        await settled(app)
        study = (await client.get("/fhir/ImagingStudy/6.1")).json()
        patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
    scripts = [
        (n["family"], [e["valueCode"] for e in n.get("extension", [])]) for n in patient["name"]
    ]
    assert scripts == [("Yamada", []), ("山田", ["IDE"]), ("やまだ", ["SYL"])]


async def test_default_patient_system(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data", default_patient_system="urn:example:mrn")
    async with running(settings) as (app, client):
        assert (await stow(client, make_instance("4.1", "4.1.1", patient_id="M-7"))).is_success
        await settled(app)
        bundle = await client.get("/fhir/Patient", params={"identifier": "urn:example:mrn|M-7"})
        (entry,) = bundle.json()["entry"]
        study = (await client.get("/fhir/ImagingStudy/4.1")).json()
        assert study["subject"]["reference"] == f"Patient/{entry['resource']['id']}"


async def test_qido_max_results(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data", qido_max_results=2)
    async with running(settings) as (_, client):
        parts = [make_instance(f"2.{n}", f"2.{n}.1") for n in range(1, 4)]
        assert (await stow(client, *parts)).status_code == 200
        page = await client.get("/dicomweb/studies")
        assert len(page.json()) == 2 and "Warning" in page.headers
        asked = await client.get("/dicomweb/studies", params={"limit": "3"})
        assert len(asked.json()) == 2
        assert "The number of results exceeded the maximum" in asked.headers["Warning"]
        rest = await client.get("/dicomweb/studies", params={"offset": "2"})
        assert len(rest.json()) == 1
