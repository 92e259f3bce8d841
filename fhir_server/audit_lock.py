"""The data dir's audit lock: whoever links and writes a batch of AuditEvents
holds it, so the hash chain (``audit_chain``) has one writer at a time.

Writers are the server's audit trail (in its process, or the audit process
beside it) and the admin commands (``radhub import``, ``client add``...),
which open the data dir of a server that may be running. Each holds the lock
for one batch only: it reads the chain's head, links its events to it and
commits them, then lets go. Held for a process's lifetime instead, a running
server would leave a command nowhere to write, and two writers each linking to
a head read before the other's commit would fork the chain.

An ``flock`` on a file in the data dir, so it excludes between processes on
one machine (servers on other machines sharing one MongoDB are not excluded:
README). It is released by the kernel when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fhir_server.run_to_end import run_to_end, succeeded

LOCK_FILE = "audit.lock"


class ChainLock:
    """The audit lock of one data dir (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None
        # An flock is per open file: two holders in this process would not
        # exclude each other through it, so they take turns here first.
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock (waiting for another process's batch, in a thread)."""
        async with self._turn:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await _wait_for_lock(fd)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd


async def _wait_for_lock(fd: int) -> None:
    # Cancelled, the thread cannot be stopped: wait for it while still holding this
    # process's turn, then give back what it took. Released later, it would drop
    # the lock of the next holder here, which shares the descriptor.
    def give_back(waited: asyncio.Future[None]) -> None:
        if succeeded(waited):
            fcntl.flock(fd, fcntl.LOCK_UN)

    waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
    await run_to_end(waiting, give_back)
