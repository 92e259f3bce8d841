"""Worker processes driven from the event loop: answers, errors, dead workers,
cancelled callers and more callers than workers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from fhir_server.resources.worker_processes import WorkerDied, WorkerProcesses


class Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot travel")
        self.handle = lambda: None  # a lambda does not pickle


def started(tag: str) -> None:
    os.environ["WORKER_TAG"] = tag


def whoami() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("WORKER_TAG")


def echo(value: Any, pause: float = 0.0) -> Any:
    time.sleep(pause)
    return value


def refuse(code: int) -> None:
    raise Refused(code, "no")


def unpicklable() -> None:
    raise Unpicklable


def die() -> None:
    os._exit(3)


@pytest.fixture
async def pool() -> Any:
    made = WorkerProcesses(2, started, ("warm",))
    yield made
    made.close()


async def test_answers_come_back_from_initialised_workers(pool: WorkerProcesses) -> None:
    pid, tag = await pool.run(whoami)
    assert pid in pool.pids and pid != os.getpid() and tag == "warm"
    big = os.urandom(3 * 1024 * 1024)  # several socket buffers each way
    assert await pool.run(echo, big) == big


async def test_exceptions_are_raised_here(pool: WorkerProcesses) -> None:
    with pytest.raises(Refused) as refused:
        await pool.run(refuse, 7)
    assert refused.value.code == 7
    with pytest.raises(RuntimeError, match="Unpicklable: cannot travel"):
        await pool.run(unpicklable)
    assert await pool.run(echo, "still serving") == "still serving"


async def test_more_callers_than_workers_all_get_their_own_answer(pool: WorkerProcesses) -> None:
    answers = await asyncio.gather(*(pool.run(echo, n, 0.01) for n in range(20)))
    assert answers == list(range(20))
    pids = {pid for pid, _ in await asyncio.gather(*(pool.run(whoami) for _ in range(8)))}
    assert pids <= set(pool.pids)


async def test_a_dead_worker_fails_its_call_and_is_replaced(pool: WorkerProcesses) -> None:
    before = set(pool.pids)
    with pytest.raises(WorkerDied, match="exit status 3"):
        await pool.run(die)
    after = set(pool.pids)
    assert len(after) == 2 and len(after - before) == 1
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in before - after)
    answers = await asyncio.gather(*(pool.run(whoami) for _ in range(6)))
    assert {tag for _, tag in answers} == {"warm"}  # the new worker was initialised too


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


async def test_a_cancelled_caller_does_not_shift_the_answers() -> None:
    pool = WorkerProcesses(1, started, ("one",))
    try:
        slow = asyncio.ensure_future(pool.run(echo, "slow", 0.3))
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await pool.run(echo, "fast") == "fast"  # not the cancelled call's answer
        assert slow.cancelled()
    finally:
        pool.close()


async def test_close_ends_the_workers() -> None:
    pool = WorkerProcesses(2, started, ("x",))
    pids = pool.pids
    await pool.run(echo, 1)
    pool.close()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    with pytest.raises(RuntimeError, match="stopped"):
        await pool.run(echo, 1)
