"""Helpers for the archive's background-work tests: apps started and stopped at
will on one data dir, token-carrying clients, and waiting with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.storage.base import Store
from tests.conftest import BASE, app_token
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

T = TypeVar("T")
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
DEADLINE = 30.0
DEFAULT_PATIENT_SYSTEM = Settings().default_patient_system


def emulated_mongo(settings: Settings) -> Store:
    """The MongoDB adapter on mongomock-motor's in-process emulator (DESIGN.md, Storage)."""
    from mongomock_motor import AsyncMongoMockClient

    from fhir_server.search.registry import SearchRegistry
    from fhir_server.storage.mongo.store import MongoStore

    registry = SearchRegistry.load().with_base_url(settings.fhir_base)
    return MongoStore(AsyncMongoMockClient(), "radhub_archive", registry)


def fast_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings whose background loops wake often, so tests wait little."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "base_url": BASE,
        "audit_flush_interval": 0.05,
        "audit_process": False,
        "change_poll_interval": 0.02,
        "sync_retry_interval": 0.02,
        "study_sync_delay": 0.02,
    }
    return Settings(**(values | changes))


@asynccontextmanager
async def running(
    settings: Settings, store: Store | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A started app (its lifespan entered) and a client with a system token."""
    app = create_app(settings, store=store)
    async with app.router.lifespan_context(app):
        token = app_token(app)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
            yield app, c


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``probe`` until it returns a value (not None), failing after a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while True:
        value = await probe()
        if value is not None:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def settled(app: FastAPI) -> None:
    """Wait, with the deadline, until the archive has written every pending
    ImagingStudy (the quiet delay cut short; what "after ingest settles" means)."""
    await asyncio.wait_for(app.state.archive_tasks.settled(), DEADLINE)


STUDY_PATIENT = "Patient/pat-1"  # the Patient of make_instance's PatientID (study_patient)


async def study_patient(client: httpx.AsyncClient, patient_id: str = "PAT-1") -> str:
    """Register the Patient whose identifier the archive finds for make_instance's
    PatientID (no issuer: the default system), so orders can be for it."""
    resource_id = patient_id.lower()
    patient = {
        "resourceType": "Patient",
        "id": resource_id,
        "identifier": [{"system": DEFAULT_PATIENT_SYSTEM, "value": patient_id}],
    }
    response = await client.put(f"/fhir/Patient/{resource_id}", json=patient)
    assert response.status_code in (200, 201), response.text
    return f"Patient/{resource_id}"


async def patients_study(
    client: httpx.AsyncClient, app: FastAPI, study: str, patient_id: str = "PAT-1"
) -> str:
    """A known Patient's study of one instance (``study``.1.1), its ImagingStudy
    written; the Patient's reference."""
    patient = await study_patient(client, patient_id)
    body = multipart(make_instance(study, f"{study}.1", f"{study}.1.1", patient_id=patient_id))
    stored = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    await settled(app)
    return patient


def order(accession: str, patient: str = STUDY_PATIENT) -> dict[str, Any]:
    """A ServiceRequest carrying ``accession`` as its accession number."""
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient},
        "identifier": [{"type": ACSN, "value": accession}],
    }


async def stow_study(
    client: httpx.AsyncClient, study: str, accession: str, count: int = 1
) -> httpx.Response:
    """STOW ``count`` instances of one study with ``accession``."""
    parts = [
        make_instance(study, f"{study}.1", f"{study}.1.{n}", accession=accession, number=n)
        for n in range(1, count + 1)
    ]
    return await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )


async def imaging_study(client: httpx.AsyncClient, uid: str) -> dict[str, Any] | None:
    """The ImagingStudy of ``uid``, or None while there is none."""
    response = await client.get(f"/fhir/ImagingStudy/{uid}")
    return response.json() if response.status_code == 200 else None
