"""Multi-row inserts (``fhir_server/storage/sqlite/bulk.py``) write every row,
in order, with its values intact, whatever the row count and width."""

from __future__ import annotations

import sqlite3

import pytest

from fhir_server.storage.sqlite.bulk import MAX_CHUNK, insert_rows


def _row(n: int, width: int) -> tuple[object, ...]:
    kinds: list[object] = [n, f"text {n}", None, n / 7, b"\x00\xff" * n, 2**62 + n]
    return tuple(kinds[i % len(kinds)] for i in range(width))


@pytest.mark.parametrize("width", [1, 7, 300])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 127, MAX_CHUNK, MAX_CHUNK + 1, 1000])
def test_every_row_lands_in_order(count: int, width: int) -> None:
    conn = sqlite3.connect(":memory:")
    columns = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t(seq INTEGER PRIMARY KEY, {columns})")
    rows = [(n, *_row(n, width)) for n in range(count)]
    insert_rows(conn, "INSERT INTO t", rows)
    assert conn.execute("SELECT * FROM t ORDER BY rowid").fetchall() == rows


def test_a_failing_row_fails_the_insert() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO t", [(1,), (2,), (1,)])
