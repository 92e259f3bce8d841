"""Locks that exclude across the radhub processes sharing one blob store.

Servers on one MongoDB database share the blob store too (DESIGN.md: several
stateless instances behind a load balancer), so a STOW-RS in one and a DELETE
of the same study in another must exclude each other as they do within one
process (``archive_locks``). Each lock is an ``flock`` on a small file under
``<blobs>/.locks``: held shared or exclusive, released by the kernel when its
holder closes it or dies (even by SIGKILL), so a crashed server leaves nothing
to clean up.

UIDs are mapped onto a fixed number of *stripes* (a hash prefix), so the lock
files stay few whatever the archive holds; two UIDs on one stripe only take
turns. An ``flock`` is per open file description: each holder opens its own,
and holders in one process must already be compatible (``archive_locks`` lets
them in only then). It needs a file system whose ``flock`` excludes between
the machines that mount it where servers run on several (a local one, or a
cluster file system that provides it; NFS maps ``flock`` onto POSIX record
locks, which one process's holders do not keep apart).

A holder that must wait polls (a blocking ``flock`` would hold a thread that
cannot be stopped when its request is cancelled); there is no queue across
processes, so a DELETE that meets a steady stream of another server's batches
into its study waits until a gap between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_DIR = ".locks"
_STRIPE_DIGITS = 3  # 4,096 stripes per kind of key
_FIRST_PAUSE, _LONGEST_PAUSE = 0.001, 0.02  # seconds between tries while another holds it


def stripe(uid: str) -> str:
    """The stripe of ``uid``: a prefix of its SHA-256, the same in every process."""
    return hashlib.sha256(uid.encode()).hexdigest()[:_STRIPE_DIGITS]


class FileLocks:
    """Named shared/exclusive ``flock`` locks in one directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    @property
    def directory(self) -> Path:
        return self._dir

    @contextlib.asynccontextmanager
    async def hold(self, name: str, exclusive: bool) -> AsyncIterator[None]:
        """Hold lock ``name`` (shared, or ``exclusive``) until the block ends."""
        fd = self._open(name)
        try:
            await _take(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # which lets go of the lock

    def try_shared(self, name: str) -> int | None:
        """Take lock ``name`` shared if nobody holds it exclusively, now: the open
        file that holds it (closing it lets go), or None."""
        fd = self._open(name)
        try:
            if _try(fd, fcntl.LOCK_SH):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    async def free(self, name: str, timeout: float) -> bool:
        """Wait until nobody holds lock ``name`` (taking it exclusively for a moment):
        True then; False if ``timeout`` seconds pass first."""
        fd = self._open(name)
        try:
            if not _try(fd, fcntl.LOCK_EX):
                await asyncio.wait_for(_take(fd, fcntl.LOCK_EX), timeout)
        except TimeoutError:
            return False
        finally:
            os.close(fd)
        return True

    def _open(self, name: str) -> int:
        path = self._dir / name
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._dir.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, 0o600)


def _try(fd: int, mode: int) -> bool:
    """Take the lock in ``mode`` if nobody stands in the way, without waiting."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _take(fd: int, mode: int) -> None:
    pause = _FIRST_PAUSE
    while not _try(fd, mode):
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
