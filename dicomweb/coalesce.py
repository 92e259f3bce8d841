"""Many small background jobs as few calls: the first at once, the rest together.

Ingest hands every received instance to a worker process (to be described) and
to a thread (to be fsynced). One hand-off each costs the server's process more
than the work it moves away: the process pool's feeder and manager threads, the
thread pool's queue, a wake-up of the event loop, and each time a contest for
the interpreter lock. A ``Coalescer`` starts a call for the first item at once
and gathers the items that arrive while a call runs into the next one, so an
idle server waits for nothing and a busy one makes one hand-off for several
items (from any number of concurrent requests). With ``lanes`` above one, that
many calls may run at once (one per worker process): an item that finds a lane
free starts at once, so an instance is not described behind the one before it
while a worker idles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item, as in the typing docs' conventions
O = TypeVar("O")  # noqa: E741

RunMany = Callable[[list[I]], Awaitable[Sequence[O | BaseException]]]
"""Runs the items of one call; returns, in order, each item's result or the
exception it alone raised (an exception raised by the call fails all its items)."""


def outcomes(
    fn: Callable[[I], O], items: Sequence[I], errors: type[Exception] = Exception
) -> list[O | Exception]:
    """``fn`` of each item, or the exception (of ``errors``) it alone raised: the
    results ``RunMany`` returns, for the blocking function behind it."""
    results: list[O | Exception] = []
    for item in items:
        try:
            results.append(fn(item))
        except errors as exc:
            results.append(exc)
    return results


class Coalescer(Generic[I, O]):
    """Runs ``run_many`` on items submitted one at a time, at most ``most`` per call
    and ``lanes`` calls at a time (see the module docstring)."""

    def __init__(self, run_many: RunMany[I, O], most: int = 16, lanes: int = 1) -> None:
        self._run_many = run_many
        self._most = most
        self._lanes = max(1, lanes)
        self._waiting: list[tuple[I, asyncio.Future[O]]] = []
        self._drains: set[asyncio.Task[None]] = set()  # held: the loop keeps tasks weakly

    def submit(self, item: I) -> asyncio.Future[O]:
        """The future result of ``item``."""
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._drains) < self._lanes:
            drain = asyncio.ensure_future(self._drain())
            self._drains.add(drain)
            # also when done: a drain cancelled before its first step runs no finally
            drain.add_done_callback(self._drains.discard)
        return future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                call, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
                await self._run(call)
        except BaseException as exc:  # cancelled (the server stops): nothing runs later
            for _, future in self._waiting:
                _settle(future, exc)
            self._waiting = []
            raise
        finally:
            # at once, not in a done callback: an item submitted in between would
            # find every lane taken and wait for no one
            self._drains.discard(asyncio.current_task())

    async def _run(self, call: list[tuple[I, asyncio.Future[O]]]) -> None:
        try:
            results = await self._run_many([item for item, _ in call])
        except BaseException as exc:
            for _, future in call:
                _settle(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(call, results, strict=True):
            if isinstance(result, BaseException):
                _settle(future, result)
            elif not future.done():  # its caller may have given up on it
                future.set_result(result)


def _settle(future: asyncio.Future[O], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
