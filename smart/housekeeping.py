"""Expired auth records are dropped at start and every ``interval`` seconds after.

Codes, refresh tokens, the access tokens recorded per grant, revocations, launches,
one-time ``jti``s and sign-in sessions all carry their expiry, and nothing reads them
once it has passed; but SQLite keeps a row until it is deleted, and every access token
issued and every sign-in leaves one. MongoDB's TTL indexes drop them too, eventually.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fhir_server.stopper import Stopper
from fhir_server.storage.auth_port import AuthData

log = logging.getLogger(__name__)

PURGE_INTERVAL = 600.0


class AuthPurge:
    """The purge loop; started and stopped by the app's lifespan."""

    def __init__(
        self,
        auth: AuthData,
        interval: float = PURGE_INTERVAL,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._interval = interval
        self._clock = clock
        self._stopper = Stopper()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="radhub-auth-purge")

    async def stop(self) -> None:
        """Let a purge under way finish, then return."""
        self._stopper.stop()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                dropped = await self._auth.purge(self._clock())
                log.debug("dropped %d expired auth records", dropped)
            except Exception:
                log.exception("dropping expired auth records failed")
            if not await self._stopper.sleep(self._interval):
                return
