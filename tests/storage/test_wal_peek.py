"""The WAL-index header changes with every commit, from any connection, and
stays the same while nobody commits (``fhir_server.storage.sqlite.wal_peek``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fhir_server.storage.sqlite.wal_peek import WalHeaderPeek


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
