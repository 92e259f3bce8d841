"""Current versions held in memory, so a repeated read needs no thread hand-off.

A point read from SQLite costs a few microseconds; handing it to a reader
thread and back (the event loop must not block on disk) costs far more than
that. Recently read and written current versions are therefore kept here and
served on the loop; a miss still goes to a reader thread.

Staying current:

- Every commit of this process writes its versions through (``written``) once
  the commit returned, before the write is acknowledged, so this process never
  reads its own writes stale.
- A read that raced a commit must not put back what it saw before the commit:
  a version read from the database is only remembered if no commit of this
  process completed while it was read (``generation``), and never over a newer
  version.
- Another process may write the same database (``radhub import`` while the
  server runs). Every version written gets the next change-log sequence number,
  so this process's own commits are contiguous runs of them. ``PRAGMA
  data_version`` on a connection of the loop's own tells whether anyone
  committed since the last look (a shared-memory read, no I/O); if so and the
  log's head moved past the last number this process wrote, or if a commit of
  this process does not start right after that number, another process wrote
  and the memory is dropped.
- A commit of this process is seen by ``PRAGMA data_version`` before it is
  written through (it returns on the writer thread first). So just before
  COMMIT the writer names the numbers it is committing (``committing``): a
  move of the head within them, starting right after the last number written
  through, is this process's own (no other process can commit inside the
  write transaction). Without that, every batch of the audit trail emptied
  the memory while reads ran beside it.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable

from fhir_server.storage.base import StoredVersion

Key = tuple[str, str]

# Read by administrators, written constantly: not worth the room.
_NOT_KEPT = frozenset({"AuditEvent"})


class CurrentCache:
    """Current versions, at most ``capacity`` of them and ``max_bytes`` of bodies
    (least recently used out); a body over ``max_body`` is not kept."""

    def __init__(
        self, capacity: int = 20_000, max_bytes: int = 64 << 20, max_body: int = 64 << 10
    ) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._max_body = max_body
        self._bytes = 0
        self._entries: OrderedDict[Key, StoredVersion] = OrderedDict()
        self.generation = 0  # commits of this process written through so far
        self._own_head = 0  # the highest change-log seq this process wrote
        self._watch: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._committing: tuple[int, int] | None = None  # seqs of a commit under way

    @property
    def watching(self) -> sqlite3.Connection | None:
        return self._watch

    def watch(self, conn: sqlite3.Connection | None) -> None:
        """Use ``conn`` (opened on the event loop's thread) to see others' commits."""
        self._watch = conn
        self._data_version = None
        self._forget_all()

    def get(self, resource_type: str, id: str) -> StoredVersion | None:
        key = (resource_type, id)
        found = self._entries.get(key)
        if found is None:
            return None
        if not self.check_external():
            return None
        self._entries.move_to_end(key)
        return found

    def offer(self, version: StoredVersion, generation: int) -> None:
        """Remember a version read from the database when the read began at
        ``generation``, unless a commit of this process completed meanwhile."""
        if generation == self.generation:
            self._put(version)

    def committing(self, versions: Iterable[StoredVersion]) -> None:
        """Versions this process is about to commit (on the writer thread, right
        before COMMIT; ``written`` follows)."""
        seqs = [v.seq for v in versions if v.seq is not None]
        self._committing = (min(seqs), max(seqs)) if seqs else None

    def not_committed(self) -> None:
        """The commit named to ``committing`` failed: others may take its numbers."""
        self._committing = None
        self._forget_all()

    def written(self, versions: Iterable[StoredVersion]) -> None:
        """Versions this process just committed (called before acknowledging them)."""
        self.generation += 1
        self._committing = None
        versions = list(versions)
        seqs = [v.seq for v in versions if v.seq is not None]
        if seqs:
            if min(seqs) != self._own_head + 1:
                # the log has a gap before these: another process wrote in between
                self._forget_all()
            self._own_head = max(self._own_head, *seqs)
        for version in versions:
            if version.resource_type not in _NOT_KEPT:
                self._put(version, replace=True)

    def check_external(self) -> bool:
        """False (and forgets everything) if another process changed resources."""
        if self._watch is None:
            return True
        version = self._watch.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return True
        self._data_version = version
        row = self._watch.execute("SELECT max(seq) FROM history").fetchone()
        head = row[0] if row and row[0] is not None else 0
        if head <= self._own_head:
            return True  # only this process's commits (already written through)
        under_way = self._committing
        if under_way is not None and under_way[0] == self._own_head + 1 and head <= under_way[1]:
            return True  # this process's commit, not yet written through
        # another writer, or a commit of ours not yet written through: start over
        self._own_head = head
        self._forget_all()
        return False

    def _put(self, version: StoredVersion, *, replace: bool = False) -> None:
        key = (version.resource_type, version.id)
        held = self._entries.get(key)
        if held is not None and held.version > version.version and not replace:
            return
        if held is not None:
            self._drop(key)
        if _size(version) > self._max_body:
            return
        self._entries[key] = version
        self._bytes += _size(version)
        while len(self._entries) > self._capacity or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Key) -> None:
        self._bytes -= _size(self._entries.pop(key))

    def _forget_all(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def _size(version: StoredVersion) -> int:
    return len(version.body) if version.body is not None else 0
