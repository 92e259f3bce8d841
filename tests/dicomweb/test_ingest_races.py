"""Ingest against DELETE, and batches that fail half-way: whatever the order, the
index and the blob store agree, and nothing acknowledged is lost.

Each interleaving is forced by pausing one side inside its critical section
(the index write of a batch, the index delete of a DELETE) and starting the
other meanwhile. Found by a concurrency audit: an identical re-send racing a
DELETE was acknowledged with its row written after the DELETE and its file gone.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dicomweb.ingest_parse import CANNOT_UNDERSTAND, PROCESSING_FAILURE
from dicomweb.records import describe_many as real_describe_many
from tests.dicomweb.archive_app import fast_settings, running
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.71.1"
X, Y, Z = (f"{SERIES}.{n}" for n in (1, 2, 3))
INSTANCE = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances"
FAILED_SOP, REFERENCED_SOP, REASON, SOP_UID = "00081198", "00081199", "00081197", "00081155"


def instance(sop: str, number: int = 1) -> bytes:
    return make_instance(STUDY, SERIES, sop, number=number)


async def stow(client: httpx.AsyncClient, *parts: bytes) -> httpx.Response:
    return await client.post(
        f"/dicomweb/studies/{STUDY}",
        content=multipart(*parts),
        headers={"Content-Type": STOW_TYPE},
    )


def referenced(response: httpx.Response) -> list[str]:
    items = response.json().get(REFERENCED_SOP, {}).get("Value", [])
    return sorted(i[SOP_UID]["Value"][0] for i in items)


def failures(response: httpx.Response) -> dict[str, int]:
    items = response.json().get(FAILED_SOP, {}).get("Value", [])
    return {(i.get(SOP_UID, {}).get("Value") or ["?"])[0]: i[REASON]["Value"][0] for i in items}


async def agree(app: FastAPI) -> list[str]:
    """The SOP Instance UIDs indexed, after checking each has its blob and no blob
    is left that no row names, and nothing is left in staging."""
    svc = app.state.dicomweb
    rows = await svc.index.instance_files(STUDY, None, None)
    assert sorted(r.blob.key for r in rows) == await svc.blobs.keys()
    assert [p for p in (svc.blobs.root / ".staging").glob("*") if p.is_file()] == []
    return sorted(r.uid for r in rows)


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.2)  # ample for a request that is not held back to finish
    return not task.done()


class Paused:
    """Wraps an object; ``method`` waits, once entered, until ``go`` is set."""

    def __init__(self, real: Any, method: str) -> None:
        self._real = real
        self.entered, self.go = asyncio.Event(), asyncio.Event()
        original: Callable[..., Awaitable[Any]] = getattr(real, method)

        async def paused(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self.go.wait()
            return await original(*args, **kwargs)

        setattr(self, method, paused)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_an_identical_re_send_racing_a_delete_is_ordered_with_it(tmp_path: Path) -> None:
    async with running(fast_settings(tmp_path)) as (app, client):
        assert (await stow(client, instance(X))).status_code == 200
        ingest = app.state.dicomweb.ingest
        index = ingest._index
        ingest._index = paused = Paused(index, "store_batch")
        resend = asyncio.create_task(stow(client, instance(X)))
        await paused.entered.wait()  # its file is back under its key, its row not yet written
        delete = asyncio.create_task(client.delete(f"{INSTANCE}/{X}"))
        assert await still_waiting(delete)  # the DELETE waits for the batch
        paused.go.set()
        assert referenced(await resend) == [X]
        assert (await delete).status_code == 204  # ... and then removes it, row and file
        ingest._index = index
        assert await agree(app) == []
        assert (await client.get(f"{INSTANCE}/{X}")).status_code == 404


async def test_a_stow_racing_a_study_delete_is_kept_whole_after_it(tmp_path: Path) -> None:
    async with running(fast_settings(tmp_path)) as (app, client):
        assert (await stow(client, instance(X))).status_code == 200
        svc = app.state.dicomweb
        index = svc.index
        svc_paused = Paused(index, "delete")
        object.__setattr__(svc, "index", svc_paused)
        try:
            delete = asyncio.create_task(client.delete(f"/dicomweb/studies/{STUDY}"))
            await svc_paused.entered.wait()  # it has read X and holds the study
            late = asyncio.create_task(stow(client, instance(Y, 2)))
            assert await still_waiting(late)  # Y is received but not committed meanwhile
            svc_paused.go.set()
            assert (await delete).status_code == 204
            assert referenced(await late) == [Y]  # committed after the DELETE: kept
        finally:
            object.__setattr__(svc, "index", index)
        assert await agree(app) == [Y]
        retrieved = await client.get(f"{INSTANCE}/{Y}", headers={"Accept": "application/dicom"})
        assert retrieved.content == instance(Y, 2)


async def test_a_batch_whose_adoption_fails_reports_each_instance_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    async with running(fast_settings(tmp_path)) as (app, client):
        assert (await stow(client, instance(X))).status_code == 200
        blobs = app.state.dicomweb.blobs
        real_adopt = blobs.adopt_many

        async def renamed_then_failed(items: Any) -> Any:
            await real_adopt(items)  # every file renamed under its key ...
            raise FileNotFoundError("directory gone before its fsync")  # ... then a failure

        blobs.adopt_many = renamed_then_failed
        try:
            response = await stow(client, instance(Y, 2), instance(Z, 3))
        finally:
            del blobs.adopt_many
        assert response.status_code == 409
        assert failures(response) == {Y: PROCESSING_FAILURE, Z: PROCESSING_FAILURE}
        assert await agree(app) == [X]


def nested(depth: int) -> bytes:
    """ContentSequence items nested ``depth`` deep (explicit VR little endian,
    undefined lengths), as the element just before Pixel Data."""
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    opening += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def deeply_nested_instance(sop: str, depth: int) -> bytes:
    plain = instance(sop)
    pixel_data = plain.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")
    return plain[:pixel_data] + nested(depth) + plain[pixel_data:]


@pytest.mark.parametrize("depth", [100, 10_000])  # past JSON's depth; past the recursion limit
async def test_an_instance_nested_too_deeply_fails_alone(tmp_path: Path, depth: int) -> None:
    async with running(fast_settings(tmp_path)) as (app, client):
        response = await stow(client, instance(X), deeply_nested_instance(Y, depth), instance(Z, 3))
        assert response.status_code == 202
        assert referenced(response) == [X, Z]
        assert list(failures(response).values()) == [CANNOT_UNDERSTAND]
        assert await agree(app) == [X, Z]


async def test_a_fault_in_describing_one_instance_fails_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def describe_many(sources: list[Path | bytes], base_url: str) -> list[Any]:
        def is_y(source: Path | bytes) -> bool:
            return Y.encode() in (source if isinstance(source, bytes) else source.read_bytes())

        return [
            ValueError("a fault") if is_y(s) else one
            for s, one in zip(sources, real_describe_many(sources, base_url), strict=True)
        ]

    monkeypatch.setattr("dicomweb.ingest.describe_many", describe_many)
    # described in this process (no worker processes), where the fault is planted
    async with running(fast_settings(tmp_path, validation_workers=0)) as (app, client):
        response = await stow(client, instance(X), instance(Y, 2), instance(Z, 3))
        assert response.status_code == 202
        assert referenced(response) == [X, Z]
        assert list(failures(response).values()) == [PROCESSING_FAILURE]
        assert await agree(app) == [X, Z]
