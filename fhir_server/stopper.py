"""The stop signal a background loop sleeps on, so stopping never waits out a sleep."""

from __future__ import annotations

import asyncio


class Stopper:
    """Set once, by ``stop``; ``sleep`` returns early when it is."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def stop(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> bool:
        """Sleep ``seconds`` (None: no limit) unless stopped or ``wake`` is set
        first; False once stopped."""
        waits = [asyncio.ensure_future(self._event.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return not self._event.is_set()
