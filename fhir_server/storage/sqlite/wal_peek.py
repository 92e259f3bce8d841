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
``PRAGMA data_version``. The file is only read here, never locked or written.
"""

from __future__ import annotations

import mmap
from pathlib import Path

# Two copies of the 48-byte WalIndexHdr; the checkpoint information that
# follows changes with checkpoints alone, not with commits.
HEADER_BYTES = 96


class WalHeaderPeek:
    """The WAL-index header of one database, read from a read-only mapping."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self._mapping = mapping

    @classmethod
    def open(cls, database: Path) -> WalHeaderPeek | None:
        """The peek for ``database``, or None when its ``-shm`` file cannot be
        mapped (not in WAL mode yet, another locking mode): then always ask."""
        try:
            with open(database.with_name(database.name + "-shm"), "rb") as shm:
                return cls(mmap.mmap(shm.fileno(), HEADER_BYTES, access=mmap.ACCESS_READ))
        except (OSError, ValueError):
            return None

    def header(self) -> bytes:
        return self._mapping[:HEADER_BYTES]

    def close(self) -> None:
        self._mapping.close()
