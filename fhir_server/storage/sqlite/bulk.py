"""Inserting many rows in few statements.

``executemany`` steps its statement once per row, and the sqlite3 module hands
the GIL back around every step. On the writer thread of a busy server that
is the expensive part: after each row the thread waits to get the GIL back from
the event loop, so a batch of a thousand AuditEvents (some twelve thousand
index rows) took many times longer to write under load than alone. A
multi-row ``INSERT … VALUES (…), (…), …`` binds a whole chunk at once and runs
it in one step, with the GIL released throughout.

Chunks are powers of two (at most ``MAX_CHUNK`` rows), so a table sees only a
handful of distinct statements and each stays in the connection's statement
cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import cache
from itertools import chain

MAX_CHUNK = 256
# SQLite's default bound on parameters per statement before 3.32 (later ones allow more)
_MAX_PARAMS = 999


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[object]]) -> None:
    """``head`` (``INSERT INTO table[(columns)]``) with every row of ``rows``, which
    all have the same number of values."""
    if not rows:
        return
    width = len(rows[0])
    largest = _chunk_size(width)
    start = 0
    while start < len(rows):
        size = min(largest, _floor_power_of_two(len(rows) - start))
        chunk = rows[start : start + size]
        conn.execute(_statement(head, width, size), tuple(chain.from_iterable(chunk)))
        start += size


def _chunk_size(width: int) -> int:
    return _floor_power_of_two(max(1, min(MAX_CHUNK, _MAX_PARAMS // width)))


def _floor_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


@cache
def _statement(head: str, width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES " + ", ".join([row] * rows)
