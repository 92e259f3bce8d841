"""The audit trail applies backpressure: when its writer falls behind, requests
wait instead of records piling up in memory (where a crash would lose them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_server.audit import AuditLog, AuditRecord
from fhir_server.interactions.services import new_uuid
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import NewVersion, StoredVersion
from fhir_server.storage.sqlite.store import SqliteStore


class HeldStore(SqliteStore):
    """The real store, whose batch writes wait until the test lets them through."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, SearchRegistry.load())
        self.gate = asyncio.Event()

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        await self.gate.wait()
        return await super().write_many(versions)


def record(n: int) -> AuditRecord:
    return AuditRecord("read", 200, datetime.now(UTC), None, "Patient", str(n))


async def test_requests_wait_while_the_writer_is_behind(tmp_path: Path) -> None:
    store = HeldStore(tmp_path)
    await store.start()
    audit = AuditLog(store, new_uuid, flush_interval=0.01, max_batch=10, max_queued=20)
    audit.start()
    try:
        for n in range(20):
            audit.record(record(n))
        await asyncio.wait_for(audit.room(), 1)  # at the limit: no wait
        audit.record(record(20))
        waiting = asyncio.ensure_future(audit.room())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the writer is held: the request waits
        store.gate.set()
        await asyncio.wait_for(waiting, 5)
        await audit.flush()
        written = await store.changes(0, 100, "AuditEvent")
    finally:
        await audit.close()
        await store.close()
    assert len(written) == 21


class MeteredStore(SqliteStore):
    """The real store, writing one batch per ticket the test hands out."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, SearchRegistry.load())
        self.tickets = asyncio.Semaphore(0)

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        await self.tickets.acquire()
        return await super().write_many(versions)


async def test_a_waiting_request_is_released_by_the_next_batch(tmp_path: Path) -> None:
    """Not only once below the limit: requests arriving later would otherwise
    take the room each batch makes, and an early one could wait indefinitely."""
    store = MeteredStore(tmp_path)
    await store.start()
    audit = AuditLog(store, new_uuid, flush_interval=0.01, max_batch=10, max_queued=20)
    audit.start()
    try:
        for n in range(21):
            audit.record(record(n))
        waiting = asyncio.ensure_future(audit.room())
        for n in range(21, 60):  # later requests keep the queue far above the limit
            audit.record(record(n))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        store.tickets.release()  # one batch of 10: 50 still queued
        await asyncio.wait_for(waiting, 5)
        assert len(await store.changes(0, 100, "AuditEvent")) == 10  # the rest still held
    finally:
        for _ in range(10):
            store.tickets.release()
        await audit.close()
        await store.close()


async def test_a_stalled_writer_is_reported_once_not_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = HeldStore(tmp_path)
    await store.start()
    audit = AuditLog(
        store, new_uuid, flush_interval=0.01, max_batch=10, max_queued=5, room_timeout=0.05
    )
    audit.start()
    try:
        for n in range(10):
            audit.record(record(n))
        with caplog.at_level(logging.WARNING, logger="fhir_server.audit"):
            await asyncio.gather(*(audit.room() for _ in range(8)))
        warnings = [r for r in caplog.records if "behind" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        store.gate.set()
        await audit.close()
        await store.close()
