"""The archive's background work: the late-order consumer and the ImagingStudy sync.

Owned by the archive, started and stopped by the app's lifespan (through
``wiring``). Stopping is graceful: each loop finishes the step it is in --
a FHIR transaction is never cut in half -- and then returns, before the
store closes.
"""

from __future__ import annotations

import asyncio
import logging

from dicomweb.order_links import OrderLinks
from dicomweb.sync_retry import SyncRetry
from fhir_server.stopper import Stopper

log = logging.getLogger(__name__)

BATCH = 1000


class ArchiveTasks:
    """Runs ``OrderLinks`` every ``poll_interval`` seconds while idle, and the
    ImagingStudy sync loop (``SyncRetry``)."""

    def __init__(self, links: OrderLinks, retry: SyncRetry, poll_interval: float) -> None:
        self.links = links
        self.retry = retry
        self._interval = poll_interval
        self._stopper = Stopper()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the consumer's position, then start both loops."""
        await self.links.load()
        self._tasks = [
            asyncio.create_task(self._consume(), name="radhub-order-links"),
            asyncio.create_task(self.retry.run(self._stopper.sleep), name="radhub-study-sync"),
        ]

    async def settled(self) -> None:
        """Return once every pending ImagingStudy is written (the loops must run)."""
        await self.retry.settled()

    async def stop(self) -> None:
        """Let each loop finish its current step, then return."""
        self._stopper.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _consume(self) -> None:
        while True:
            try:
                done = await self.links.step(BATCH)
            except Exception:
                log.exception("reading the change log for late orders failed")
                done = 0
            # a full batch means more is waiting: go on at once
            if not await self._stopper.sleep(0 if done >= BATCH else self._interval):
                return
