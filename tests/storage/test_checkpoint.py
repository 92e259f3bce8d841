"""WAL checkpoints run beside the writer, not inside its COMMITs, and still keep
the WAL from growing without bound."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import NewVersion
from fhir_server.storage.sqlite.checkpoint import Checkpointer
from fhir_server.storage.sqlite.store import SqliteStore

REGISTRY = SearchRegistry.load()
T0 = datetime(2026, 12, 1, tzinfo=UTC)
FILLER = "x" * 16000


def note(n: int) -> NewVersion:
    body = {"resourceType": "Basic", "id": f"b{n}", "text": {"status": "generated", "div": FILLER}}
    return NewVersion("Basic", f"b{n}", 1, T0, "create", orjson.dumps(body), [])


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    try:
        autocheckpoint = await store.run_write(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        written = 0
        for batch in range(20):  # about 20 x 100 x 32 kB (body in two tables) = 64 MB
            versions = [note(batch * 100 + n) for n in range(100)]
            await store.write_many(versions)
            written += sum(len(v.body or b"") for v in versions) * 2
            await asyncio.sleep(0.02)
        assert store._checkpointer.runs >= 1 and store._checkpointer.restarts >= 1
        wal = store.path.with_name(store.path.name + "-wal")
        # without checkpoints the WAL would hold every page written since start;
        # with them it starts over and is cut back to journal_size_limit. On a busy
        # machine the last RESTART may still be due when the loop ends: the WAL is
        # cut back by the first write after it, so keep writing a little (bounded)
        assert written > 60 << 20
        deadline = time.monotonic() + 30
        extra = 0
        while wal.stat().st_size >= written // 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)  # past the checkpointer's interval
            await store.write_many([note(10_000 + extra)])
            extra += 1
        assert wal.stat().st_size < written // 2
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "radhub.sqlite3") as conn:
        # every write committed: the 2,000, and the few the wait above added
        assert conn.execute("SELECT count(*) FROM resources").fetchone()[0] == 2000 + extra


def test_a_small_wal_is_left_alone_and_failures_do_not_stop_it(tmp_path: Path) -> None:
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"frames")
    opened: list[int] = []

    def connect() -> sqlite3.Connection:
        opened.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    checkpointer = Checkpointer(wal, connect, threshold=1024, interval=0)
    checkpointer.poke()
    checkpointer.close()
    assert opened == []  # under the threshold: nothing to do
    wal.write_bytes(b"f" * 2048)
    checkpointer = Checkpointer(wal, connect, threshold=1024, interval=0)
    checkpointer.poke()
    checkpointer._pool.shutdown(wait=True)  # let the failing run finish
    assert opened == [1] and checkpointer.runs == 0
    checkpointer.close()


def test_a_restart_gives_up_soon_while_a_reader_holds_the_wal(tmp_path: Path) -> None:
    """A RESTART holds new writers back while it waits: it must not wait out the
    connection's 10 s busy timeout for a long read, only a moment."""
    db = tmp_path / "radhub.sqlite3"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t(x BLOB)")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # holds its snapshot on the WAL
    for _ in range(64):
        writer.execute("INSERT INTO t VALUES (?)", (b"x" * 4000,))

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    checkpointer = Checkpointer(db.with_name(db.name + "-wal"), connect, 1024, 0, restart_at=1024)
    checkpointer.poke()
    done = checkpointer._pool.submit(lambda: None)  # queued behind the checkpoint
    done.result(timeout=5)  # had it waited for the reader, this would take 10 s
    assert checkpointer.restarts == 1 and checkpointer.gave_up == 1
    reader.execute("COMMIT")
    checkpointer.close()
    writer.close()
    reader.close()
