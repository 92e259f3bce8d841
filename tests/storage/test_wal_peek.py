"""The WAL-index header changes with every commit, from any connection, and
stays the same while nobody commits (``fhir_server.storage.sqlite.wal_peek``)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.sqlite.store import SqliteStore
from fhir_server.storage.sqlite.wal_peek import WalHeaderPeek

# The byte of the -shm file whose lock tells a process opening the database
# that others use the shared memory (UNIX_SHM_DMS in SQLite's os_unix.c).
_DMS_BYTE = 128
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
except OSError:
    print("held")
else:
    print("free")
"""


def in_use_by_this_process(database: Path) -> bool:
    """Whether another process sees this one's SQLite lock on the shared memory
    (POSIX record locks can only be seen from another process)."""
    shm = f"{database}-shm"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, shm, str(_DMS_BYTE)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "held"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def test_the_header_moves_with_each_commit_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = connect(path)
    writer.execute("CREATE TABLE t(x)")
    peek = WalHeaderPeek.open(path)
    assert peek is not None
    seen = {peek.header()}
    reader = connect(path)
    reader.execute("SELECT count(*) FROM t").fetchone()  # reads leave it alone
    assert peek.header() in seen
    for n in range(3):
        other = connect(path)  # another connection, as another process would be
        other.execute("INSERT INTO t VALUES (?)", (n,))
        other.close()
        header = peek.header()
        assert header not in seen
        seen.add(header)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (9)")
    writer.execute("ROLLBACK")
    rolled_back = peek.header()
    writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
    assert peek.header() == rolled_back  # a checkpoint alone commits nothing
    peek.close()
    reader.close()
    writer.close()


def test_no_shared_memory_file_gives_no_peek(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t(x)").connection.close()  # rollback journal
    assert WalHeaderPeek.open(path) is None


def test_peeks_never_drop_sqlites_locks(tmp_path: Path) -> None:
    """Closing any descriptor of the -shm file drops every POSIX lock this process
    holds on it, SQLite's too: the peeks of one file share one descriptor, closed
    with the last of them."""
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("SELECT count(*) FROM t").fetchone()
    assert in_use_by_this_process(path)
    first, second = WalHeaderPeek.open(path), WalHeaderPeek.open(path)
    assert first is not None and second is not None
    assert in_use_by_this_process(path)
    first.close()
    assert in_use_by_this_process(path)
    assert second.header() is not None
    conn.close()
    second.close()


async def test_closing_one_store_keeps_the_locks_of_another(tmp_path: Path) -> None:
    """Two stores on one data dir in one process (tests do it; ``radhub import``
    runs in its own process): the first to close must not take the second's
    locks with it."""
    registry = SearchRegistry.load()
    server, other = SqliteStore(tmp_path, registry), SqliteStore(tmp_path, registry)
    await server.start()
    await other.start()
    try:
        await other.close()
        assert in_use_by_this_process(server.path)
    finally:
        await server.close()
