"""The audit chain's lock (``audit_lock``): one holder at a time across processes
(two ``ChainLock`` objects on one data dir stand for two processes: each has its
own open file, as a process would), and a cancelled waiter leaves nothing held."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path

import pytest

from fhir_server.audit_lock import LOCK_FILE, ChainLock


def taken_elsewhere(data_dir: Path) -> bool:
    """Whether a third party (its own open file) finds the lock taken."""
    with (data_dir / LOCK_FILE).open("ab") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False


async def test_one_holder_at_a_time_and_none_after(tmp_path: Path) -> None:
    lock = ChainLock(tmp_path)
    async with lock.held():
        assert taken_elsewhere(tmp_path)
    assert not taken_elsewhere(tmp_path)
    lock.close()


async def test_a_cancelled_waiter_does_not_drop_the_next_holders_lock(tmp_path: Path) -> None:
    """Cancelled while its thread waits for another process's batch, a waiter must
    not later give back the lock the next holder in its process has taken: they
    share one open file, so that would free the next holder's lock under it."""
    here, other = ChainLock(tmp_path), ChainLock(tmp_path)
    release_other = asyncio.Event()

    async def other_batch() -> None:
        async with other.held():
            await release_other.wait()

    holding = asyncio.create_task(other_batch())
    await asyncio.sleep(0.05)
    waiter = asyncio.create_task(here.held().__aenter__())
    await asyncio.sleep(0.05)  # its thread now waits in flock
    waiter.cancel()
    next_holder_in = asyncio.Event()
    still_held: list[bool] = []

    async def next_holder() -> None:
        async with here.held():
            next_holder_in.set()
            await asyncio.sleep(0.2)  # a cancelled waiter's late release would land here
            still_held.append(taken_elsewhere(tmp_path))

    following = asyncio.create_task(next_holder())
    await asyncio.sleep(0.05)
    release_other.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(following, 5)
    assert next_holder_in.is_set() and still_held == [True]
    assert not taken_elsewhere(tmp_path)
    here.close()
    other.close()
