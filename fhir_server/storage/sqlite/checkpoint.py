"""WAL checkpoints off the write path.

SQLite's automatic checkpoint runs inside the COMMIT that pushes the WAL past
its threshold (1,000 pages): that commit copies the pages into the database
and fsyncs it while the write lock is held, so every few megabytes one write
(a 500-entry transaction Bundle: every one of them) waited tens of
milliseconds for it. The writer therefore runs with ``wal_autocheckpoint=0``
and this checkpointer, poked after each group-commit fsync, runs checkpoints on
its own connection and thread:

- PASSIVE ones, when the WAL file is past ``threshold`` bytes and the last
  check began at least ``interval`` seconds ago (a few per second under a steady
  write load, none when idle). They copy what no reader still needs and never
  block the writer or readers. (The file keeps its size when the writer starts
  it over, so the size only says whether there can be anything to copy.)
- A PASSIVE checkpoint cannot make the writer start the WAL over: that happens
  only when a write transaction begins after a complete checkpoint, and under
  load the writer is mid-transaction when it completes. So when the passive
  run reports more than ``restart_at`` bytes of frames since the last start
  over, a RESTART follows it: it waits for the current write, holds new writers
  back while it copies the little the passive run left, and so makes the next
  write start the WAL from its beginning. ``journal_size_limit`` (set on the
  writer) then truncates the file. While a long read still uses the WAL it waits
  at most ``RESTART_PATIENCE_MS`` (new writes wait that long too), then gives up
  until the next check.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 1 << 20
DEFAULT_RESTART_AT = 16 << 20
DEFAULT_INTERVAL = 0.25
RESTART_PATIENCE_MS = 100


class Checkpointer:
    """Runs checkpoints in its own thread, one at a time (see the module docstring)."""

    def __init__(
        self,
        wal: Path,
        connect: Callable[[], sqlite3.Connection],
        threshold: int = DEFAULT_THRESHOLD,
        interval: float = DEFAULT_INTERVAL,
        restart_at: int = DEFAULT_RESTART_AT,
    ) -> None:
        self._wal = wal
        self._connect = connect
        self._threshold = threshold
        self._interval = interval
        self._restart_at = restart_at
        self._last = -interval
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self.runs = 0  # checkpoints run so far
        self.restarts = 0  # RESTART ones among them
        self.gave_up = 0  # of those, the ones that gave up waiting for a reader

    def poke(self) -> None:
        """Check the WAL's size soon, checkpointing if it is past the threshold.
        Cheap and thread-safe: does nothing while a check is under way or within
        ``interval`` of the last one (no thread hand-off per commit)."""
        now = time.monotonic()
        with self._lock:
            if self._busy or self._closed or now - self._last < self._interval:
                return
            self._busy = True
            self._last = now
        try:
            self._pool.submit(self._run)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._busy = False

    def _run(self) -> None:
        try:
            if _size(self._wal) < self._threshold:
                return
            if self._conn is None:
                self._conn = self._connect()
                # a RESTART holds new writers back while it waits for readers still
                # on the WAL: give up soon and try again later rather than stall writes
                self._conn.execute(f"PRAGMA busy_timeout={RESTART_PATIENCE_MS}")
                self._page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
            _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.runs += 1
            if frames * self._page_size >= self._restart_at:
                # the writer has not started the WAL over since it held this much; the
                # passive run just copied nearly all of it, so this one is brief
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                self.restarts += 1
                self.gave_up += busy
        except sqlite3.Error:
            # the next poke tries again; meanwhile the WAL just grows
            log.exception("WAL checkpoint failed")
        finally:
            with self._lock:
                self._busy = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
