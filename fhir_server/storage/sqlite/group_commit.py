"""Group commit: many commits, one fsync.

The writer commits with ``synchronous=NORMAL`` (in WAL mode: no fsync at
commit), then each committer waits here until an fsync of the WAL file that
started after its commit has finished. Concurrent writers share one fsync, so
sixteen clients creating resources cost one disk flush instead of sixteen,
and no write is acknowledged before it is on disk. Process kills lose nothing
either way (the OS holds the committed pages); the fsync is what survives a
power cut or an OS crash.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # no WAL: everything was checkpointed into the (synced) database
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupCommit:
    """Hands out a ticket per commit; ``durable(ticket)`` returns once it is on disk."""

    def __init__(self, wal: Path, after_sync: Callable[[], None] | None = None) -> None:
        self._wal = wal
        self._after_sync = after_sync  # the checkpointer's poke
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-fsync")
        self._committed = 0
        self._synced = 0
        self._inflight: tuple[int, asyncio.Future[None]] | None = None
        self._dir_synced = False

    def committed(self) -> int:
        """Call right after a COMMIT, under the write lock: the commit's ticket."""
        self._committed += 1
        return self._committed

    async def durable(self, ticket: int) -> None:
        while self._synced < ticket:
            if self._inflight is None:
                # covers every commit handed a ticket so far
                target = self._committed
                future = asyncio.get_running_loop().run_in_executor(self._pool, self._sync)
                self._inflight = (target, future)
            target, future = self._inflight
            try:
                await asyncio.shield(future)
            finally:
                if self._inflight is not None and self._inflight[1] is future:
                    self._inflight = None
            self._synced = max(self._synced, target)

    def _sync(self) -> None:
        _fsync(self._wal)
        if not self._dir_synced:
            # the WAL file's directory entry, once (it is created with the database)
            _fsync(self._wal.parent)
            self._dir_synced = True
        if self._after_sync is not None:
            self._after_sync()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
