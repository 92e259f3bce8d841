"""The ImagingStudy sync off the STOW path: coalesced per study, due by a
debounce with a cap, failures backed off -- one schedule for all of it.

``PendingStudies`` is checked against a hand-driven clock (the only thing
replaced); the coalescing through the real app and store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from dicomweb.study_sync import PendingStudies, SyncTiming
from tests.dicomweb.archive_app import (
    DEADLINE,
    eventually,
    fast_settings,
    imaging_study,
    running,
    settled,
)
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

REQUESTS = 30
T = TypeVar("T")


class Clock:
    """A clock the test moves by hand: ``clock.now += seconds``."""

    now = 100.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pending(clock: Clock) -> PendingStudies:
    timing = SyncTiming(delay=0.5, max_wait=5.0, retry=2.0, ceiling=8.0)
    return PendingStudies(timing, lambda: clock.now)


def test_a_study_is_due_once_its_ingest_goes_quiet(pending: PendingStudies, clock: Clock) -> None:
    pending.mark(["1.1"])
    clock.now += 0.4
    pending.mark(["1.1"])  # still receiving: the wait starts again
    clock.now += 0.4
    assert pending.take_due() == []
    assert pending.next_due() == pytest.approx(0.1)
    clock.now += 0.1
    assert pending.take_due() == ["1.1"]
    assert "1.1" in pending  # in flight until done
    pending.done("1.1")
    assert len(pending) == 0 and pending.next_due() is None


def test_a_study_that_keeps_receiving_is_due_at_the_cap(
    pending: PendingStudies, clock: Clock
) -> None:
    pending.mark(["1.1"])
    for _ in range(12):  # a request every 0.4 s for 4.8 s
        clock.now += 0.4
        pending.mark(["1.1"])
        assert pending.take_due() == []
    clock.now += 0.2
    assert pending.take_due() == ["1.1"]  # 5 s after the first change


def test_changes_while_in_flight_are_synced_again(pending: PendingStudies, clock: Clock) -> None:
    pending.mark(["1.1"], urgent=True)
    assert pending.take_due() == ["1.1"]
    pending.mark(["1.1"])  # the write in flight may have read the index before this
    pending.done("1.1")
    assert "1.1" in pending
    clock.now += 0.5
    assert pending.take_due() == ["1.1"]


def test_failures_back_off_doubling_up_to_the_ceiling(
    pending: PendingStudies, clock: Clock
) -> None:
    pending.mark(["1.1", "2.2"], urgent=True)
    assert pending.take_due() == ["1.1", "2.2"]
    pending.done("2.2")  # one failing study holds no other back
    waits = []
    for _ in range(4):
        pending.failed("1.1")
        waits.append(pending.next_due())
        clock.now += 1.0
        assert pending.take_due() == []
        clock.now += (waits[-1] or 0.0) - 1.0
        assert pending.take_due() == ["1.1"]
    assert waits == [2.0, 4.0, 8.0, 8.0]


async def test_settled_cuts_the_quiet_wait_short(pending: PendingStudies) -> None:
    pending.mark(["1.1"])
    assert pending.take_due() == []
    settling = asyncio.create_task(pending.settled())
    await asyncio.sleep(0)  # let it start waiting
    assert not settling.done()
    assert pending.take_due() == ["1.1"]  # due at once, the quiet delay waived
    pending.done("1.1")
    await asyncio.wait_for(settling, DEADLINE)


async def test_a_study_sent_in_many_requests_is_written_once(tmp_path: Path) -> None:
    # a quiet delay far longer than the sending: nothing is written until it settles
    settings = fast_settings(tmp_path / "data", study_sync_delay=60.0)
    async with running(settings) as (app, client):
        for n in range(1, REQUESTS + 1):
            parts = [make_instance("6.1", f"6.1.{n % 3}", f"6.1.{n}.{k}", number=k) for k in (1, 2)]
            response = await client.post(
                "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
            )
            assert response.status_code == 200
        assert await imaging_study(client, "6.1") is None
        await settled(app)
        study = await imaging_study(client, "6.1")
        assert study is not None
        assert (study["numberOfInstances"], study["numberOfSeries"]) == (2 * REQUESTS, 3)
        history = (await client.get("/fhir/ImagingStudy/6.1/_history")).json()
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
        found = await client.get(
            "/fhir/ImagingStudy", params={"subject": study["subject"]["reference"]}
        )
        assert [e["resource"]["id"] for e in found.json()["entry"]] == ["6.1"]


async def test_what_a_fhir_client_added_survives_the_next_sync(tmp_path: Path) -> None:
    """The archive owns what it maps from the images (and the links it resolves);
    what a FHIR client wrote beside them (a note, the reason, who read it) is kept
    when a late series makes the archive write the study again."""
    async with running(fast_settings(tmp_path / "data")) as (app, client):
        first = multipart(make_instance("6.2", "6.2.1", "6.2.1.1"))
        headers = {"Content-Type": STOW_TYPE}
        assert (await client.post("/dicomweb/studies", content=first, headers=headers)).is_success
        await settled(app)
        study = await imaging_study(client, "6.2")
        assert study is not None
        added = {
            "note": [{"text": "compare with the prior of 2019"}],
            "reasonCode": [{"text": "cough for six weeks"}],
            "interpreter": [{"reference": "Practitioner/rad-1"}],
        }
        confidential = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"}
        labels = {"security": [confidential | {"code": "R"}]}
        edited = study | added | {"numberOfSeries": 7, "description": "edited", "meta": labels}
        assert (await client.put("/fhir/ImagingStudy/6.2", json=edited)).status_code == 200
        late = multipart(make_instance("6.2", "6.2.2", "6.2.2.1"))
        assert (await client.post("/dicomweb/studies", content=late, headers=headers)).is_success
        await settled(app)
        after = await imaging_study(client, "6.2")
        assert after is not None and after["numberOfSeries"] == 2
        assert after["description"] == "CHEST"  # the archive's own, from the images
        assert {k: after.get(k) for k in added} == added
        assert after["meta"]["security"] == labels["security"]
        history = (await client.get("/fhir/ImagingStudy/6.2/_history")).json()
        assert len(history["entry"]) == 3  # written, edited, written again: no more


async def test_a_study_sent_again_for_another_patient_during_its_sync_gets_that_patient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync found (created) the Patient of the study as it read it; before it
    recorded that Patient on the index, the study was deleted and sent again for
    another patient. The study must end under the second patient, not the first."""
    headers = {"Content-Type": STOW_TYPE}

    def sent_for(patient_id: str) -> bytes:
        return multipart(make_instance("6.3", "6.3.1", "6.3.1.1", patient_id=patient_id))

    async with running(fast_settings(tmp_path / "data")) as (app, client):
        index = app.state.dicomweb.index
        record_patient = index.set_patient
        raced: list[asyncio.Task[httpx.Response]] = []

        async def deleted_and_sent_again_first(*args: object) -> None:
            if not raced:
                # the DELETE ends by syncing the study, which waits for this sync:
                # it runs on once its rows are gone, and is awaited after
                deleting = asyncio.create_task(client.delete("/dicomweb/studies/6.3"))
                while await index.study("6.3") is not None:
                    assert not deleting.done(), "the DELETE ended before its rows went"
                    await asyncio.sleep(0.01)
                again = await client.post(
                    "/dicomweb/studies", content=sent_for("PAT-B"), headers=headers
                )
                assert again.status_code == 200
                raced.append(deleting)
            await record_patient(*args)

        monkeypatch.setattr(index, "set_patient", deleted_and_sent_again_first)
        first = await client.post("/dicomweb/studies", content=sent_for("PAT-A"), headers=headers)
        assert first.status_code == 200
        deleting = await eventually(lambda: _first(raced), "the race in the sync")
        assert (await deleting).status_code == 204
        await settled(app)
        study = await imaging_study(client, "6.3")
        assert study is not None
        patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
        assert [i["value"] for i in patient["identifier"]] == ["PAT-B"]
        row = await index.study("6.3")
        assert row is not None and f"Patient/{row.patient_ref}" == study["subject"]["reference"]


async def _first(items: list[T]) -> T | None:
    return items[0] if items else None
