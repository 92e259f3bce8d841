"""ArchiveLocks: ingest batches share a study, a DELETE has it alone, a batch's
instances are its alone; first come, first served; nothing kept once idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from dicomweb.archive_locks import ArchiveLocks

Holder = Callable[[], AbstractAsyncContextManager[None]]


async def turns() -> None:
    for _ in range(5):  # enough loop turns for any waiter that could go on to do so
        await asyncio.sleep(0)


class Probe:
    """Runs ``hold`` in a task, records when it got in, and lets it out on demand."""

    def __init__(self, hold: Holder, log: list[str], name: str) -> None:
        self._out = asyncio.Event()
        self.task = asyncio.create_task(self._run(hold, log, name))

    async def _run(self, hold: Holder, log: list[str], name: str) -> None:
        async with hold():
            log.append(name)
            await self._out.wait()

    async def leave(self) -> None:
        self._out.set()
        await self.task


@pytest.fixture
async def locks() -> AsyncIterator[ArchiveLocks]:
    held = ArchiveLocks()
    yield held
    assert held.busy() == 0  # every test leaves nothing behind


async def test_batches_into_one_study_go_on_together(locks: ArchiveLocks) -> None:
    log: list[str] = []
    a = Probe(lambda: locks.storing(["S"], ["1"]), log, "a")
    b = Probe(lambda: locks.storing(["S"], ["2"]), log, "b")
    await turns()
    assert log == ["a", "b"]
    await a.leave()
    await b.leave()


async def test_a_delete_waits_for_batches_and_holds_later_ones_back(locks: ArchiveLocks) -> None:
    log: list[str] = []
    first = Probe(lambda: locks.storing(["S"], ["1"]), log, "first batch")
    await turns()
    delete = Probe(lambda: locks.removing("S"), log, "delete")
    await turns()
    later = Probe(lambda: locks.storing(["S"], ["2"]), log, "later batch")
    other = Probe(lambda: locks.storing(["T"], ["3"]), log, "other study")
    await turns()
    assert log == ["first batch", "other study"]  # the DELETE waits; so does what came after
    await first.leave()
    await turns()
    assert log[-1] == "delete"
    await delete.leave()
    await turns()
    assert log[-1] == "later batch"
    await later.leave()
    await other.leave()


async def test_one_instance_in_two_batches_takes_turns(locks: ArchiveLocks) -> None:
    log: list[str] = []
    a = Probe(lambda: locks.storing(["S"], ["1", "2"]), log, "a")
    await turns()
    b = Probe(lambda: locks.storing(["S", "T"], ["3", "2"]), log, "b")
    await turns()
    assert log == ["a"]
    await a.leave()
    await turns()
    assert log == ["a", "b"]
    await b.leave()


async def test_a_cancelled_waiter_does_not_hold_back_those_behind_it(locks: ArchiveLocks) -> None:
    log: list[str] = []
    first = Probe(lambda: locks.storing(["S"], ["1"]), log, "batch")
    await turns()
    delete = Probe(lambda: locks.removing("S"), log, "delete")
    await turns()
    later = Probe(lambda: locks.storing(["S"], ["2"]), log, "later")
    await turns()
    delete.task.cancel()  # the request went away while it waited
    await turns()
    assert log == ["batch", "later"]
    with pytest.raises(asyncio.CancelledError):
        await delete.task
    await first.leave()
    await later.leave()


async def test_a_waiter_cancelled_as_it_is_granted_gives_the_lock_back(
    locks: ArchiveLocks,
) -> None:
    log: list[str] = []
    async with locks.removing("S"):
        second = Probe(lambda: locks.removing("S"), log, "second delete")
        await turns()
        batch = Probe(lambda: locks.storing(["S"], ["1"]), log, "batch")
        await turns()
    # leaving released the lock and granted it to the second, which has not run yet
    second.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second.task
    await turns()
    assert log == ["batch"]  # the second gave back what it was granted
    await batch.leave()
