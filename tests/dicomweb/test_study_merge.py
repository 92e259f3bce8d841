"""A study's attributes are its instances' merged: an instance stored later without
a value (a presentation state: AccessionNumber empty, no StudyDate) leaves what
the images gave, in QIDO-RS and in the ImagingStudy (real app, real store)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.dicomweb.archive_app import (
    ACSN,
    emulated_mongo,
    eventually,
    fast_settings,
    imaging_study,
    order,
    running,
    settled,
    study_patient,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

STUDY = "5.7"


def edited(data: bytes, **changes: Any) -> bytes:
    """A Part-10 instance with attributes set (None: removed)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def stow(client: httpx.AsyncClient, instance: bytes) -> None:
    response = await client.post(
        "/dicomweb/studies", content=multipart(instance), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text


async def qido(client: httpx.AsyncClient, **params: str) -> list[str]:
    response = await client.get("/dicomweb/studies", params=params)
    if response.status_code == 204:
        return []
    return [study["0020000D"]["Value"][0] for study in response.json()]


@pytest.mark.parametrize("backend", ["sqlite", "mongo"])
async def test_a_presentation_state_stored_after_the_images_keeps_the_study_s_attributes(
    tmp_path: Path, backend: str
) -> None:
    settings = fast_settings(tmp_path / "data")
    store = emulated_mongo(settings) if backend == "mongo" else None
    async with running(settings, store) as (app, client):
        await study_patient(client)
        created = await client.post("/fhir/ServiceRequest", json=order("LW-ACC"))
        assert created.status_code == 201
        image = make_instance(STUDY, f"{STUDY}.1", f"{STUDY}.1.1", accession="LW-ACC")
        await stow(client, edited(image, ReferringPhysicianName="Ref^Doc"))
        await settled(app)
        state = make_instance(STUDY, f"{STUDY}.2", f"{STUDY}.2.1", accession="")
        state = edited(state, StudyDate=None, StudyTime=None, StudyDescription=None)
        await stow(client, state)
        await settled(app)

        async def both_instances() -> dict[str, Any] | None:
            study = await imaging_study(client, STUDY)
            return study if study and study.get("numberOfInstances") == 2 else None

        study = await eventually(both_instances, f"ImagingStudy/{STUDY} of 2 instances")
        acsn = [i["value"] for i in study.get("identifier", []) if i.get("type") == ACSN]
        assert acsn == ["LW-ACC"]
        assert study.get("started") == "2024-01-05"  # (no TimezoneOffsetFromUTC: the day)
        assert study.get("description") == "CHEST"
        assert study.get("referrer", {}).get("display")
        assert [r["reference"] for r in study.get("basedOn", [])] == [
            f"ServiceRequest/{created.json()['id']}"
        ]
        assert await qido(client, AccessionNumber="LW-ACC") == [STUDY]
        assert await qido(client, StudyDate="20240105") == [STUDY]
