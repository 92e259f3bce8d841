"""The coalescer batching ingest's background hand-offs (``dicomweb.coalesce``)."""

from __future__ import annotations

import asyncio

import pytest

from dicomweb.coalesce import Coalescer


class Recorder:
    """``run_many`` that records its calls and holds each until released."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(items)
        await self.release.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_the_first_item_runs_at_once_and_later_ones_together() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, most=3)
    first = coalescer.submit(0)
    await asyncio.sleep(0)
    assert run.calls == [[0]]  # an idle coalescer waits for nothing
    rest = [coalescer.submit(i) for i in (2, 4, 6, 8)]
    run.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60, 80]
    assert run.calls == [[0], [2, 4, 6], [8]]  # at most ``most`` per call, in order


async def test_an_item_that_fails_fails_alone() -> None:
    run = Recorder()
    run.release.set()
    coalescer: Coalescer[int, int] = Coalescer(run)
    futures = [coalescer.submit(i) for i in range(4)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, "odd 1", 20, "odd 3"]


async def test_a_failed_call_fails_its_items_and_the_next_call_still_runs() -> None:
    calls: list[list[int]] = []

    async def flaky(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        await asyncio.sleep(0)
        if len(calls) == 1:
            raise OSError("disk went away")
        return items

    coalescer: Coalescer[int, int] = Coalescer(flaky)
    first = coalescer.submit(1)
    await asyncio.sleep(0)
    second = coalescer.submit(2)
    with pytest.raises(OSError, match="disk went away"):
        await first
    assert await second == 2
    assert calls == [[1], [2]]


async def test_an_abandoned_future_does_not_stop_the_others() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run)
    first = coalescer.submit(0)
    await asyncio.sleep(0)
    given_up, kept = coalescer.submit(2), coalescer.submit(4)
    given_up.cancel()
    run.release.set()
    assert (await first, await kept) == (0, 40)


async def test_items_still_waiting_when_the_drain_is_cancelled_are_cancelled() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run)
    running = coalescer.submit(0)
    await asyncio.sleep(0)
    waiting = coalescer.submit(2)
    (drain,) = coalescer._drains
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    assert running.cancelled() and waiting.cancelled()
    run.release.set()
    assert await coalescer.submit(4) == 40  # a new drain starts for new items


async def test_with_two_lanes_a_second_item_does_not_wait_for_the_first_call() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, most=3, lanes=2)
    first = coalescer.submit(0)
    await asyncio.sleep(0)
    second = coalescer.submit(2)
    await asyncio.sleep(0)
    assert run.calls == [[0], [2]]  # both running: one per lane
    rest = [coalescer.submit(i) for i in (4, 6, 8, 10)]
    await asyncio.sleep(0)
    assert run.calls == [[0], [2]]  # no third lane: the rest wait, together
    run.release.set()
    assert await asyncio.gather(first, second, *rest) == [0, 20, 40, 60, 80, 100]
    assert sorted(map(len, run.calls)) == [1, 1, 1, 3]  # at most ``most`` per call
    assert not coalescer._drains  # every lane ended with nothing left


async def test_an_item_submitted_as_the_last_call_ends_still_runs() -> None:
    """The caller of the last item wakes before the drain's done callbacks would
    run: the drain must have let go of its lane by then."""
    run = Recorder()
    run.release.set()
    coalescer: Coalescer[int, int] = Coalescer(run)
    assert await coalescer.submit(0) == 0
    assert await asyncio.wait_for(coalescer.submit(2), 5) == 20


async def test_a_drain_cancelled_before_its_first_step_frees_its_lane() -> None:
    run = Recorder()
    run.release.set()
    coalescer: Coalescer[int, int] = Coalescer(run)
    first = coalescer.submit(0)
    (drain,) = coalescer._drains
    drain.cancel()  # before the loop ever ran it: its finally never runs
    with pytest.raises(asyncio.CancelledError):
        await drain
    assert await asyncio.wait_for(coalescer.submit(2), 5) == 20  # a new lane takes both
    assert first.result() == 0
