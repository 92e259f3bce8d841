"""Whether anyone may have committed to a WAL database, from its shared memory.

``PRAGMA data_version`` answers that exactly, but through the sqlite3 module,
which lets go of the interpreter lock around the statement; on a busy server's
event loop, taking the lock back behind the other threads cost more than the
statement (~9 % of the loop's time under ``wrk``, for a question asked on
every memory hit, with an answer that is almost always "no").

Every commit in WAL mode rewrites the WAL-index header at the start of the
``-shm`` file (its ``iChange`` counter and ``mxFrame`` at least) before any new
read transaction can see the commit: https://sqlite.org/walformat.html, "The
WAL-Index Header". So while those bytes are unchanged, nobody committed. A
changed header (a commit, a checkpoint restarting the log, a recovery, or a
header caught half-written) only means "look properly": the caller then asks
``PRAGMA data_version``. The file is only read here, never locked or written,
and its descriptor stays open as long as SQLite may hold locks on it (``_OPEN``).
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

# Two copies of the 48-byte WalIndexHdr; the checkpoint information that
# follows changes with checkpoints alone, not with commits.
HEADER_BYTES = 96


@dataclass
class _Shm:
    fd: int
    mapping: mmap.mmap | None
    users: int = 0


# One descriptor per ``-shm`` file per process, closed with its last peek.
# SQLite's locks on that file are POSIX record locks, which belong to the
# process: closing *any* descriptor of the file drops them all, SQLite's
# included (its readers' marks, and the lock that tells other processes the
# shared memory is in use, without which the next process to open the
# database would reset it under our connections). Process-wide state because
# the locks are.
_OPEN: dict[tuple[int, int], _Shm] = {}
_OPEN_LOCK = threading.Lock()


class WalHeaderPeek:
    """The WAL-index header of one database, read from a read-only mapping.

    Close it only once this peek's SQLite connections to the database are
    closed: the last peek of a file to close closes its descriptor (see
    ``_OPEN``)."""

    def __init__(self, key: tuple[int, int], shm: _Shm) -> None:
        self._key = key
        self._shm: _Shm | None = shm

    @classmethod
    def open(cls, database: Path) -> WalHeaderPeek | None:
        """The peek for ``database``, or None when there is no ``-shm`` file to open
        (not in WAL mode): then always ask."""
        path = database.with_name(database.name + "-shm")
        with _OPEN_LOCK:
            try:
                found = os.stat(path)
            except OSError:
                return None
            key = (found.st_dev, found.st_ino)
            shm = _OPEN.get(key)
            if shm is None:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    return None
                try:
                    # the mapping holds a duplicate of ``fd``, closed with it
                    mapping: mmap.mmap | None = mmap.mmap(fd, HEADER_BYTES, access=mmap.ACCESS_READ)
                except (OSError, ValueError):  # not initialised yet: never tells
                    mapping = None
                shm = _OPEN[key] = _Shm(fd, mapping)
            shm.users += 1
            return cls(key, shm)

    def header(self) -> bytes | None:
        """The header now, or None when it cannot be read (then: ask SQLite)."""
        mapping = self._shm.mapping if self._shm is not None else None
        return None if mapping is None else mapping[:HEADER_BYTES]

    def close(self) -> None:
        with _OPEN_LOCK:
            shm, self._shm = self._shm, None
            if shm is None:
                return
            shm.users -= 1
            if shm.users == 0:
                del _OPEN[self._key]
                if shm.mapping is not None:
                    shm.mapping.close()
                os.close(shm.fd)
