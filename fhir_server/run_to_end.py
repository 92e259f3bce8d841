"""Awaiting work that cannot be stopped (a call in a thread) without letting go of
what the awaiting task holds while that work still runs.

``asyncio.shield`` keeps the work going when the awaiting task is cancelled, but
the task itself moves on at once: out of its ``async with`` blocks, releasing the
locks the work was done under, and dropping what the work returns. ``run_to_end``
waits for the work's end first (cancelling it again does not stop the wait), then
raises the cancellation; ``on_cancelled`` gets the finished work, to undo or close
what it produced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_to_end(
    work: asyncio.Future[T], on_cancelled: Callable[[asyncio.Future[T]], None] | None = None
) -> T:
    """``await work``; cancelled, wait until ``work`` is done, call ``on_cancelled``
    with it, and raise the cancellation."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        if on_cancelled is not None:
            on_cancelled(work)
        raise


def succeeded(work: asyncio.Future[T]) -> bool:
    """Whether finished ``work`` returned (was neither cancelled nor failed)."""
    return not work.cancelled() and work.exception() is None
