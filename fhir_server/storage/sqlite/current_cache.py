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
- Another process may write the same database: ``radhub import`` while the
  server runs, or the server's own audit writer process (``audit_process``),
  which commits a batch of AuditEvents several times a second. An unchanged
  WAL-index header (``wal_peek``) says nobody committed since the last look;
  when it changed, ``PRAGMA data_version`` on a connection of the loop's own
  tells whether anyone did (a shared-memory read, no I/O). If so, the
  change log since the last look names every resource written (each version
  gets the next sequence number, deletions included), and just those are
  dropped unless what is held is already that version. AuditEvents are never
  held, so the audit writer's batches drop nothing; a large import (more than
  ``max_scan`` changes) drops everything instead of reading its whole log.
- This process's own commits are seen the same way: one committed but not yet
  written through drops the old versions it replaces, and ``written`` then
  puts the new ones.
- A read that began before another process's commit is not put back after
  the commit was seen either: seeing commits counts as a generation too.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable

from fhir_server.storage.base import StoredVersion
from fhir_server.storage.sqlite.wal_peek import WalHeaderPeek

Key = tuple[str, str]

# Read by administrators, written constantly: not worth the room.
_NOT_KEPT = frozenset({"AuditEvent"})


class CurrentCache:
    """Current versions, at most ``capacity`` of them and ``max_bytes`` of bodies
    (least recently used out); a body over ``max_body`` is not kept."""

    def __init__(
        self,
        capacity: int = 20_000,
        max_bytes: int = 64 << 20,
        max_body: int = 64 << 10,
        max_scan: int = 10_000,
    ) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._max_body = max_body
        self._max_scan = max_scan
        self._bytes = 0
        self._entries: OrderedDict[Key, StoredVersion] = OrderedDict()
        self.generation = 0  # commits written through or seen dropping something
        self._seen = 0  # the change-log head at the last look
        self._watch: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._peek: WalHeaderPeek | None = None
        self._header = b""  # the WAL-index header at the last look

    @property
    def watching(self) -> sqlite3.Connection | None:
        return self._watch

    def watch(self, conn: sqlite3.Connection | None, peek: WalHeaderPeek | None = None) -> None:
        """Use ``conn`` (opened on the event loop's thread) to see others' commits,
        and ``peek`` (if given; the caller closes it) to skip asking while nobody
        committed."""
        self._watch = conn
        self._peek = peek
        self._header = b""
        self._data_version = None
        self._seen = 0
        self._forget_all()

    def get(self, resource_type: str, id: str) -> StoredVersion | None:
        key = (resource_type, id)
        if key not in self._entries:
            return None
        self.check_external()
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def offer(self, version: StoredVersion, generation: int) -> None:
        """Remember a version read from the database when the read began at
        ``generation``, unless a commit was seen meanwhile."""
        if generation == self.generation:
            self._put(version)

    def written(self, versions: Iterable[StoredVersion]) -> None:
        """Versions this process just committed (called before acknowledging them)."""
        self.generation += 1
        for version in versions:
            if version.resource_type not in _NOT_KEPT:
                self._put(version, replace=True)

    def check_external(self) -> None:
        """Drop what commits since the last look (anyone's) have replaced."""
        if self._watch is None:
            return
        if self._peek is not None:
            # read before asking: a commit after this read changes it again
            header = self._peek.header()
            if header is not None and header == self._header:
                return
            self._header = header or b""
        version = self._watch.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        row = self._watch.execute("SELECT max(seq) FROM history").fetchone()
        head = row[0] if row and row[0] is not None else 0
        seen, self._seen = self._seen, head
        if head <= seen:
            return
        self.generation += 1  # a read under way may have begun before these commits
        if head - seen > self._max_scan:
            self._forget_all()
            return
        if not self._entries:
            return
        changed = self._watch.execute(
            "SELECT seq, type, id FROM history WHERE seq > ? AND seq <= ?", (seen, head)
        )
        for seq, resource_type, id in changed:
            held = self._entries.get((resource_type, id))
            if held is not None and (held.seq is None or held.seq < seq):
                self._drop((resource_type, id))

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
