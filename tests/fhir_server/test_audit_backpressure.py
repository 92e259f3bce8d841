"""The audit trail applies backpressure: when its writer falls behind, requests
wait instead of records piling up in memory (where a crash would lose them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_server.audit import AuditLog, AuditRecord
from fhir_server.interactions.services import new_uuid
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import NewVersion, StoredVersion
from fhir_server.storage.sqlite.store import SqliteStore


class HeldStore(SqliteStore):
    """The real store, whose batch writes wait until the test lets them through:
    one batch per ``let_through``, or all from ``open`` on."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, SearchRegistry.load())
        self._tickets = asyncio.Semaphore(0)
        self._open = False

    def let_through(self) -> None:
        self._tickets.release()

    def open(self) -> None:
        self._open = True
        self._tickets.release()

    async def write_many(self, versions: Sequence[NewVersion]) -> list[StoredVersion]:
        if not self._open:
            await self._tickets.acquire()
            if self._open:
                self._tickets.release()  # the next waiter passes too
        return await super().write_many(versions)


@asynccontextmanager
async def held_trail(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[HeldStore, AuditLog]]:
    """A running audit log (a batch of 10 every 10 ms) on a held store; at the end
    the store is opened, so that closing the log writes what is queued."""
    store = HeldStore(tmp_path)
    await store.start()
    audit = AuditLog(store, new_uuid, flush_interval=0.01, max_batch=10, **options)
    audit.start()
    try:
        yield store, audit
    finally:
        store.open()
        await audit.close()
        await store.close()


def record(n: int) -> AuditRecord:
    return AuditRecord("read", 200, datetime.now(UTC), None, "Patient", str(n))


async def test_requests_wait_while_the_writer_is_behind(tmp_path: Path) -> None:
    async with held_trail(tmp_path, max_queued=20) as (store, audit):
        for n in range(20):
            audit.record(record(n))
        await asyncio.wait_for(audit.room(), 1)  # at the limit: no wait
        audit.record(record(20))
        waiting = asyncio.ensure_future(audit.room())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the writer is held: the request waits
        store.open()
        await asyncio.wait_for(waiting, 5)
        await audit.flush()
        written = await store.changes(0, 100, "AuditEvent")
    assert len(written) == 21


async def test_a_waiting_request_is_released_by_the_next_batch(tmp_path: Path) -> None:
    """Not only once below the limit: requests arriving later would otherwise
    take the room each batch makes, and an early one could wait indefinitely."""
    async with held_trail(tmp_path, max_queued=20) as (store, audit):
        for n in range(21):
            audit.record(record(n))
        waiting = asyncio.ensure_future(audit.room())
        for n in range(21, 60):  # later requests keep the queue far above the limit
            audit.record(record(n))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        store.let_through()  # one batch of 10: 50 still queued
        await asyncio.wait_for(waiting, 5)
        assert len(await store.changes(0, 100, "AuditEvent")) == 10  # the rest still held


async def test_a_stalled_writer_is_reported_once_not_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with held_trail(tmp_path, max_queued=5, room_timeout=0.05) as (_, audit):
        for n in range(10):
            audit.record(record(n))
        with caplog.at_level(logging.WARNING, logger="fhir_server.audit"):
            await asyncio.gather(*(audit.room() for _ in range(8)))
        warnings = [r for r in caplog.records if "behind" in r.getMessage()]
        assert len(warnings) == 1
