"""A failed ImagingStudy sync converges: retried in the background while the
server runs, and found again at start-up after a restart.

The fault is injected at the store port, around the real embedded store: the
next ``failures`` ImagingStudy writes raise ``StorageUnavailable`` (what a
store outage looks like to the archive); everything else reaches SQLite.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dicomweb.sync_retry import archived_study
from fhir_server.errors import StorageUnavailable
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import NewVersion, StoredVersion, Transaction
from fhir_server.storage.dicom_port import StudyRow
from fhir_server.storage.sqlite.store import SqliteStore
from tests.dicomweb.archive_app import (
    DEFAULT_PATIENT_SYSTEM,
    eventually,
    fast_settings,
    imaging_study,
    order,
    running,
    settled,
    stow_study,
    study_patient,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart


class _FailingTransaction:
    def __init__(self, inner: Transaction, faults: FailingImagingStudyWrites) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write(self, version: NewVersion) -> StoredVersion:
        if version.resource_type == "ImagingStudy" and self._faults.failures > 0:
            self._faults.failures -= 1
            self._faults.fired += 1
            raise StorageUnavailable("injected fault: ImagingStudy write")
        return await self._inner.write(version)


class FailingImagingStudyWrites:
    """The real store, except for the next ``failures`` ImagingStudy writes."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.fired = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._inner.transaction() as tx:
            yield _FailingTransaction(tx, self)


def faulty_store(settings: Settings, failures: int) -> FailingImagingStudyWrites:
    registry = SearchRegistry.load().with_base_url(settings.fhir_base)
    return FailingImagingStudyWrites(SqliteStore(settings.data_dir, registry), failures)


async def probe(condition: bool) -> bool | None:
    return True if condition else None


async def test_a_failed_sync_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data")
    store = faulty_store(settings, failures=2)
    async with running(settings, store) as (app, client):
        stored = await stow_study(client, "9.1", "RETRY-1", count=3)
        assert stored.status_code == 200  # the instances are acknowledged regardless
        study = await eventually(lambda: imaging_study(client, "9.1"), "the retried sync")
        assert study["numberOfInstances"] == 3
        assert store.fired == 2  # the first write and the first retry failed
        await settled(app)  # the study leaves the pending set once its write returned
        assert len(app.state.dicomweb.sync.pending) == 0


async def test_an_unsynced_study_is_found_again_after_a_restart(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data", sync_retry_interval=3600.0)
    store = faulty_store(settings, failures=1)
    async with running(settings, store) as (app, client):
        assert (await stow_study(client, "9.2", "RETRY-2")).status_code == 200
        await eventually(lambda: probe(store.fired == 1), "the deferred sync to fail")
        assert await imaging_study(client, "9.2") is None
        assert "9.2" in app.state.dicomweb.sync.pending  # only in memory: lost at the stop
    async with running(settings) as (_, client):
        study = await eventually(lambda: imaging_study(client, "9.2"), "the start-up scan")
        assert study["numberOfInstances"] == 1


async def test_an_imaging_study_left_after_its_study_was_deleted_is_removed(
    tmp_path: Path,
) -> None:
    settings = fast_settings(tmp_path / "data", sync_retry_interval=3600.0)
    store = faulty_store(settings, failures=0)
    async with running(settings, store) as (app, client):
        assert (await stow_study(client, "9.3", "RETRY-3")).status_code == 200
        await settled(app)
        assert await imaging_study(client, "9.3") is not None
        store.failures = 1
        deleted = await client.delete("/dicomweb/studies/9.3")  # the sync fails
        assert deleted.status_code == 204  # the instances are gone all the same
        assert store.fired == 1
        assert await imaging_study(client, "9.3") is not None
    async with running(settings) as (_, client):

        async def removed() -> bool | None:
            gone = (await client.get("/fhir/ImagingStudy/9.3")).status_code == 410
            return True if gone else None

        await eventually(removed, "the orphaned ImagingStudy to be deleted")


async def test_a_delete_whose_sync_failed_is_retried(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data")
    store = faulty_store(settings, failures=0)
    async with running(settings, store) as (app, client):
        assert (await stow_study(client, "9.4", "RETRY-4", count=2)).status_code == 200
        await settled(app)
        store.failures = 1
        deleted = await client.delete("/dicomweb/studies/9.4/series/9.4.1/instances/9.4.1.1")
        assert deleted.status_code == 204 and store.fired == 1
        study = await eventually(
            lambda: _with_instances(client, "9.4", 1), "the retried ImagingStudy update"
        )
        assert [i["uid"] for s in study["series"] for i in s["instance"]] == ["9.4.1.2"]


async def test_a_missed_sync_is_found_even_when_the_counts_still_match(tmp_path: Path) -> None:
    # series A's one instance deleted, one added in series B, neither synced (the
    # process stops): the ImagingStudy still has one series of one instance, as the
    # index does, but the wrong one. The study's revision tells the scan.
    settings = fast_settings(tmp_path / "data", sync_retry_interval=3600.0)
    store = faulty_store(settings, failures=0)
    async with running(settings, store) as (app, client):
        assert (await stow_study(client, "9.5", "RETRY-5")).status_code == 200
        await settled(app)
        store.failures = 2
        later = make_instance("9.5", "9.5.2", "9.5.2.1", accession="RETRY-5")
        stored = await client.post(
            "/dicomweb/studies", content=multipart(later), headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200
        await eventually(lambda: probe(store.fired == 1), "the deferred sync to fail")
        deleted = await client.delete("/dicomweb/studies/9.5/series/9.5.1")
        assert deleted.status_code == 204 and store.fired == 2  # its sync failed too
        study = await imaging_study(client, "9.5")
        assert study is not None and [s["uid"] for s in study["series"]] == ["9.5.1"]
        assert study["numberOfSeries"] == study["numberOfInstances"] == 1
    async with running(settings) as (_, client):

        async def series_b() -> dict[str, Any] | None:
            study = await imaging_study(client, "9.5")
            found = study is not None and [s["uid"] for s in study["series"]] == ["9.5.2"]
            return study if found else None

        await eventually(series_b, "the start-up scan to rewrite the ImagingStudy")


async def test_a_late_order_whose_link_failed_is_linked_after_a_restart(
    tmp_path: Path,
) -> None:
    """The order consumer moves on past an order whose relink failed (the retry is
    the sync's), but the retry is only in memory: the position it saves must not
    pass the order until the link is written, or a stop loses the link for ever
    (the start-up scan compares counts and Patients, not orders)."""
    settings = fast_settings(tmp_path / "data", sync_retry_interval=3600.0)
    store = faulty_store(settings, failures=0)
    async with running(settings, store) as (app, client):
        await study_patient(client)
        assert (await stow_study(client, "9.6", "LATE-6")).status_code == 200
        await settled(app)
        store.failures = 1_000  # every ImagingStudy write fails from now on
        posted = await client.post("/fhir/ServiceRequest", json=order("LATE-6"))
        assert posted.status_code == 201
        seq = (await app.state.services.store.read("ServiceRequest", posted.json()["id"])).seq
        links = app.state.archive_tasks.links
        await eventually(lambda: probe(links.position >= seq), "the consumer to pass the order")
        assert store.fired >= 1 and "basedOn" not in (await imaging_study(client, "9.6") or {})
    async with running(settings) as (_, client):

        async def linked() -> dict[str, Any] | None:
            study = await imaging_study(client, "9.6")
            return study if study is not None and study.get("basedOn") else None

        study = await eventually(linked, "the order's link after the restart")
        assert study["basedOn"] == [{"reference": f"ServiceRequest/{posted.json()['id']}"}]


async def _with_instances(client: Any, uid: str, count: int) -> dict[str, Any] | None:
    study = await imaging_study(client, uid)
    return study if study is not None and study["numberOfInstances"] == count else None


def test_only_the_archives_own_imaging_studies_count_as_orphans() -> None:
    own = {"id": "1.2", "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2"}]}
    assert archived_study(own)
    assert not archived_study(own | {"id": "client-written"})
    assert not archived_study({"id": "1.2", "identifier": [{"value": "urn:oid:1.2"}]})
    assert not archived_study(None)


async def test_a_study_whose_patient_id_two_patients_share_waits_until_one_remains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two Patients carry the study's Patient ID (a duplicate registration): the sync
    neither picks one nor creates a third. The instances are acknowledged; the study
    gets no ImagingStudy and no Patient on the index (no patient token reaches it),
    and the log says why, without a traceback or the Patient ID. Once one of the two
    is gone, the retry writes the ImagingStudy for the one that remains."""
    settings = fast_settings(tmp_path / "data")
    async with running(settings) as (app, client):
        for resource_id in ("dup-a", "dup-b"):
            duplicate = {
                "resourceType": "Patient",
                "id": resource_id,
                "identifier": [{"system": DEFAULT_PATIENT_SYSTEM, "value": "PAT-DUP"}],
            }
            created = await client.put(f"/fhir/Patient/{resource_id}", json=duplicate)
            assert created.status_code == 201, created.text
        body = multipart(make_instance("9.7", "9.7.1", "9.7.1.1", patient_id="PAT-DUP"))
        stored = await client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200

        def waits() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "sync of 9.7 waits" in r.getMessage()]

        await eventually(lambda: probe(bool(waits())), "the sync to say why it waits")
        (said, *_) = waits()
        assert DEFAULT_PATIENT_SYSTEM in said.getMessage()
        assert "PAT-DUP" not in caplog.text  # (a record number: not for the log)
        assert said.exc_info is None
        assert await imaging_study(client, "9.7") is None
        row = await app.state.dicomweb.index.study("9.7")
        assert row is not None and row.patient_ref is None
        found = await client.get("/fhir/Patient", params={"identifier": "PAT-DUP"})
        assert sorted(e["resource"]["id"] for e in found.json()["entry"]) == ["dup-a", "dup-b"]

        assert (await client.delete("/fhir/Patient/dup-b")).status_code in (200, 204)
        study = await eventually(lambda: imaging_study(client, "9.7"), "the retried sync")
        assert study["subject"]["reference"] == "Patient/dup-a"

        async def linked_row() -> StudyRow | None:
            # the index takes the Patient just after the sync's transaction commits
            row = await app.state.dicomweb.index.study("9.7")
            return row if row is not None and row.patient_ref is not None else None

        row = await eventually(linked_row, "the study's Patient on the index")
        assert row.patient_ref == "dup-a"
