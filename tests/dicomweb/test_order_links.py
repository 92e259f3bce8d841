"""Late orders: an ImagingStudy is linked to its ServiceRequest when the order
arrives after the images, through the change-log consumer (real app, real store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from dicomweb.change_cursor import ChangeCursor
from dicomweb.order_links import CONSUMER, accessions
from dicomweb.study_sync import V2_0203
from dicomweb.wiring import STATE_DIR
from fhir_server.cli.importer import run_import
from tests.dicomweb.archive_app import (
    emulated_mongo,
    eventually,
    fast_settings,
    imaging_study,
    order,
    running,
    settled,
    stow_study,
    study_patient,
)


def based_on(study: dict[str, Any] | None) -> list[str] | None:
    if study is None:
        return None
    return [ref["reference"] for ref in study.get("basedOn", [])]


async def wait_based_on(client: httpx.AsyncClient, uid: str, wanted: list[str]) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        study = await imaging_study(client, uid)
        return study if based_on(study) == wanted else None

    return await eventually(probe, f"ImagingStudy/{uid} basedOn {wanted}")


async def search_ids(client: httpx.AsyncClient, **params: str) -> list[str]:
    bundle = (await client.get("/fhir/ImagingStudy", params=params)).json()
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def test_accessions_are_the_identifiers_of_type_acsn() -> None:
    assert accessions(order("A-1")) == {"A-1"}
    placer = {"coding": [{"system": V2_0203, "code": "PLAC"}]}
    identifiers = [{"system": "s"}, {"value": "B"}, {"type": placer, "value": "C"}]
    assert accessions({"identifier": identifiers}) == set()
    assert accessions({"resourceType": "ServiceRequest"}) == set()
    assert accessions(None) == set()


@pytest.mark.parametrize("backend", ["sqlite", "mongo"])
async def test_order_after_images_is_linked_and_searchable(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path / "data")
    store = emulated_mongo(settings) if backend == "mongo" else None
    async with running(settings, store) as (app, client):
        await study_patient(client)
        assert (await stow_study(client, "5.1", "LATE-1", count=2)).status_code == 200
        await settled(app)
        before = await imaging_study(client, "5.1")
        assert before is not None and "basedOn" not in before
        created = await client.post("/fhir/ServiceRequest", json=order("LATE-1"))
        assert created.status_code == 201
        reference = f"ServiceRequest/{created.json()['id']}"
        linked = await wait_based_on(client, "5.1", [reference])
        assert linked["numberOfInstances"] == 2  # rewritten from the index, not patched
        assert await search_ids(client, basedon=reference) == ["5.1"]
        assert await search_ids(client, identifier="LATE-1") == ["5.1"]


async def test_changed_and_deleted_orders_move_and_drop_the_link(tmp_path: Path) -> None:
    async with running(fast_settings(tmp_path / "data")) as (_, client):
        await study_patient(client)
        await stow_study(client, "6.1", "OLD-1")
        await stow_study(client, "6.2", "NEW-1")
        created = (await client.post("/fhir/ServiceRequest", json=order("OLD-1"))).json()
        reference = f"ServiceRequest/{created['id']}"
        await wait_based_on(client, "6.1", [reference])
        moved = await client.put(f"/fhir/{reference}", json=order("NEW-1") | {"id": created["id"]})
        assert moved.status_code == 200
        await wait_based_on(client, "6.2", [reference])
        await wait_based_on(client, "6.1", [])
        assert (await client.delete(f"/fhir/{reference}")).status_code in (200, 204)
        await wait_based_on(client, "6.2", [])
        assert await search_ids(client, basedon=reference) == []


async def test_a_second_order_with_the_same_accession_unlinks(tmp_path: Path) -> None:
    async with running(fast_settings(tmp_path / "data")) as (_, client):
        await study_patient(client)
        await stow_study(client, "7.1", "DUP-1")
        first = (await client.post("/fhir/ServiceRequest", json=order("DUP-1"))).json()
        await wait_based_on(client, "7.1", [f"ServiceRequest/{first['id']}"])
        await client.post("/fhir/ServiceRequest", json=order("DUP-1"))
        await wait_based_on(client, "7.1", [])  # ambiguous: no guess


async def test_the_position_survives_a_restart_and_replays_change_nothing(
    tmp_path: Path,
) -> None:
    settings = fast_settings(tmp_path / "data")
    cursor = ChangeCursor(settings.data_dir / STATE_DIR, CONSUMER)
    async with running(settings) as (app, client):
        await study_patient(client)
        links = app.state.archive_tasks.links
        await stow_study(client, "8.1", "REST-1")
        study = await eventually(lambda: imaging_study(client, "8.1"), "the ImagingStudy")
        # the consumer reads the ServiceRequest changes only: an unrelated order moves it
        posted = await client.post("/fhir/ServiceRequest", json=order("UNRELATED"))
        assert posted.status_code == 201
        store = app.state.services.store
        seq = (await store.read("ServiceRequest", posted.json()["id"])).seq

        async def consumed() -> int | None:
            return links.position if links.position >= seq else None

        await eventually(consumed, "the consumer to pass the unrelated order")
    position = cursor.load()
    assert position >= seq and "basedOn" not in study
    # the order arrives while no server runs (``radhub import`` on the data dir)
    orders = tmp_path / "orders.ndjson"
    orders.write_bytes(orjson.dumps(order("REST-1") | {"id": "late"}) + b"\n")
    assert await run_import(settings, [orders]) == 0
    async with running(settings) as (app, client):
        assert app.state.archive_tasks.links.resumed_from == position
        linked = await wait_based_on(client, "8.1", ["ServiceRequest/late"])
    relinked_at = cursor.load()
    assert relinked_at > position
    cursor.path.unlink()  # a lost position: the whole log is read again
    async with running(settings) as (app, client):
        links = app.state.archive_tasks.links
        assert links.resumed_from == 0

        async def replayed() -> int | None:
            return links.position if links.position >= relinked_at else None

        await eventually(replayed, "the consumer to replay the log")
        again = await imaging_study(client, "8.1")
    assert again is not None and again["meta"]["versionId"] == linked["meta"]["versionId"]


async def test_only_an_accession_number_of_the_same_patient_links(tmp_path: Path) -> None:
    """The same number as another identifier type, or on another patient's order, is no
    link: the images would be attached to someone else's request."""
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        await study_patient(client)
        await stow_study(client, "9.1", "X-1")
        await stow_study(client, "9.2", "X-2")
        other = await client.put(
            "/fhir/Patient/other", json={"resourceType": "Patient", "id": "other"}
        )
        assert other.status_code in (200, 201)
        elsewhere = await client.post("/fhir/ServiceRequest", json=order("X-1", "Patient/other"))
        placer = order("X-2")
        placer["identifier"] = [
            {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": "X-2"}
        ]
        placed = await client.post("/fhir/ServiceRequest", json=placer)
        assert elsewhere.status_code == placed.status_code == 201
        store = app.state.services.store
        seq = (await store.read("ServiceRequest", placed.json()["id"])).seq
        links = app.state.archive_tasks.links

        async def consumed() -> int | None:
            return links.position if links.position >= seq else None

        await eventually(consumed, "the consumer to pass both orders")
        await settled(app)
        for uid in ("9.1", "9.2"):
            study = await imaging_study(client, uid)
            assert study is not None and "basedOn" not in study
        own = (await client.post("/fhir/ServiceRequest", json=order("X-2"))).json()
        await wait_based_on(client, "9.2", [f"ServiceRequest/{own['id']}"])
