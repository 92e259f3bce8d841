"""SQL for versions, history and the change log: plain synchronous functions over
a connection, run by ``SqliteStore`` in its writer or reader threads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fhir_server.errors import InvalidSearch, StorageUnavailable, VersionConflict
from fhir_server.search.dates import from_micros, to_micros
from fhir_server.storage.base import (
    HistoryPage,
    HistoryQuery,
    Method,
    NewVersion,
    StoredVersion,
)
from fhir_server.storage.sqlite import search_sql
from fhir_server.storage.sqlite.bulk import insert_rows

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS resources(
        pk INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_updated INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        body BLOB,
        UNIQUE(type, id))""",
    "CREATE INDEX IF NOT EXISTS resources_type_updated ON resources(type, last_updated, pk)",
    "CREATE INDEX IF NOT EXISTS resources_updated ON resources(last_updated, pk)",
    """CREATE TABLE IF NOT EXISTS history(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_updated INTEGER NOT NULL,
        method TEXT NOT NULL,
        body BLOB,
        UNIQUE(type, id, version))""",
    "CREATE INDEX IF NOT EXISTS history_type_seq ON history(type, seq)",
    "CREATE INDEX IF NOT EXISTS history_updated ON history(last_updated)",
)

_VERSION_COLUMNS = "type, id, version, last_updated, method, body, seq"

# SQLite's limits on one statement (https://www.sqlite.org/limits.html): reached by a
# search the client made too large (hundreds of OR values, a long chain, a _sort
# repeated), not by the store being unavailable, so a 400 and not a 503 to retry
_STATEMENT_LIMITS = (
    "too many terms in compound select",
    "expression tree is too large",
    "parser stack overflow",
    "too many columns",
    "too many sql variables",
    "at most 64 tables in a join",
)


@contextmanager
def map_sqlite_errors() -> Iterator[None]:
    """Translate driver failures into the server's error hierarchy."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if any(limit in str(exc).lower() for limit in _STATEMENT_LIMITS):
            raise InvalidSearch(f"the search is too complex for this server ({exc})") from exc
        raise StorageUnavailable(f"embedded store unavailable: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StorageUnavailable(f"embedded store error: {exc}") from exc


def create_schema(conn: sqlite3.Connection, index_ddl: Sequence[str]) -> None:
    for statement in (*SCHEMA, *index_ddl):
        conn.execute(statement)


def ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def begin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _version_from_row(row: tuple[Any, ...]) -> StoredVersion:
    rtype, rid, version, updated, method, body, seq = row
    return StoredVersion(rtype, rid, version, from_micros(updated), method, body, seq)


def read_current(conn: sqlite3.Connection, resource_type: str, id: str) -> StoredVersion | None:
    # The current row of `resources` is always the newest `history` row; reading it
    # from history keeps one shape for current and past versions.
    row = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM history WHERE type = ? AND id = ? "
        "ORDER BY version DESC LIMIT 1",
        (resource_type, id),
    ).fetchone()
    return _version_from_row(row) if row else None


def read_version(
    conn: sqlite3.Connection, resource_type: str, id: str, version: int
) -> StoredVersion | None:
    row = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM history WHERE type = ? AND id = ? AND version = ?",
        (resource_type, id, version),
    ).fetchone()
    return _version_from_row(row) if row else None


def write_version(conn: sqlite3.Connection, new: NewVersion) -> StoredVersion:
    """Write one version inside the caller's transaction."""
    row = conn.execute(
        "SELECT pk, version FROM resources WHERE type = ? AND id = ?",
        (new.resource_type, new.id),
    ).fetchone()
    current = row[1] if row else 0
    if new.version != current + 1:
        raise VersionConflict(
            f"{new.resource_type}/{new.id} is at version {current}, "
            f"cannot write version {new.version}"
        )
    updated = to_micros(new.last_updated)
    deleted = 1 if new.method == "delete" else 0
    if row:
        pk = row[0]
        conn.execute(
            "UPDATE resources SET version = ?, last_updated = ?, deleted = ?, body = ? "
            "WHERE pk = ?",
            (new.version, updated, deleted, new.body, pk),
        )
    else:
        cursor = conn.execute(
            "INSERT INTO resources(type, id, version, last_updated, deleted, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (new.resource_type, new.id, new.version, updated, deleted, new.body),
        )
        pk = cursor.lastrowid
        assert pk is not None
    cursor = conn.execute(
        "INSERT INTO history(type, id, version, last_updated, method, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (new.resource_type, new.id, new.version, updated, new.method, new.body),
    )
    seq = cursor.lastrowid
    assert seq is not None
    if deleted:
        search_sql.delete_index(conn, pk)
    else:
        search_sql.write_index(conn, pk, new.resource_type, new.index, replace=row is not None)
    method: Method = new.method
    return StoredVersion(
        new.resource_type, new.id, new.version, new.last_updated, method, new.body, seq
    )


def write_versions(conn: sqlite3.Connection, versions: Sequence[NewVersion]) -> list[StoredVersion]:
    """Write versions inside the caller's transaction, in order: runs of new
    resources set-wise (a transaction Bundle is mostly creates), others one by one."""
    written: list[StoredVersion] = []
    run: list[NewVersion] = []
    for version in versions:
        if _is_new(version):
            run.append(version)
            continue
        written.extend(_insert_run(conn, run))
        run = []
        written.append(write_version(conn, version))
    written.extend(_insert_run(conn, run))
    return written


def _is_new(version: NewVersion) -> bool:
    return version.version == 1 and version.method == "create"


def _insert_run(conn: sqlite3.Connection, run: Sequence[NewVersion]) -> list[StoredVersion]:
    if not run:
        return []
    try:
        return _insert_new(conn, run)
    except sqlite3.IntegrityError as exc:
        raise VersionConflict(f"a resource created here exists already: {exc}") from None


def write_batch(
    conn: sqlite3.Connection,
    versions: Sequence[NewVersion],
) -> list[StoredVersion]:
    """Write several versions in one transaction: all or none."""
    begin(conn)
    try:
        if all(_is_new(v) for v in versions):
            written = _insert_new(conn, versions)
        else:
            written = [write_version(conn, version) for version in versions]
        commit(conn)
    except sqlite3.IntegrityError as exc:
        rollback(conn)
        raise VersionConflict(f"a resource of the batch exists already: {exc}") from None
    except BaseException:
        rollback(conn)  # a failed COMMIT leaves the transaction open
        raise
    return written


def _next_keys(conn: sqlite3.Connection) -> tuple[int, int]:
    """The last resource pk and history seq given out (we are the only writer)."""
    pk = conn.execute("SELECT coalesce(max(pk), 0) FROM resources").fetchone()[0]
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'history'").fetchone()
    return pk, (row[0] if row else 0)


def _insert_new(conn: sqlite3.Connection, versions: Sequence[NewVersion]) -> list[StoredVersion]:
    """First versions of new resources, set-wise: one statement per table for the
    whole batch (the audit trail and bulk imports write thousands of these)."""
    last_pk, last_seq = _next_keys(conn)
    resources, history, written = [], [], []
    index: dict[str, list[tuple[object, ...]]] = {}
    for n, v in enumerate(versions, 1):
        micros = to_micros(v.last_updated)
        resources.append((last_pk + n, v.resource_type, v.id, 1, micros, 0, v.body))
        history.append((last_seq + n, v.resource_type, v.id, 1, micros, "create", v.body))
        search_sql.index_rows(last_pk + n, v.resource_type, v.index, into=index)
        written.append(
            StoredVersion(v.resource_type, v.id, 1, v.last_updated, "create", v.body, last_seq + n)
        )
    insert_rows(
        conn, "INSERT INTO resources(pk, type, id, version, last_updated, deleted, body)", resources
    )
    insert_rows(
        conn, "INSERT INTO history(seq, type, id, version, last_updated, method, body)", history
    )
    search_sql.insert_index_rows(conn, index)
    return written


def _history_where(query: HistoryQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.resource_type is not None:
        clauses.append("h.type = ?")
        params.append(query.resource_type)
    if query.id is not None:
        clauses.append("h.id = ?")
        params.append(query.id)
    if query.since is not None:
        clauses.append("h.last_updated >= ?")
        params.append(to_micros(query.since))
    if query.at is not None:
        # the version current at `at`: written at or before it, and not yet replaced then
        at = to_micros(query.at)
        clauses.append(
            "h.last_updated <= ? AND NOT EXISTS (SELECT 1 FROM history n WHERE n.type = h.type "
            "AND n.id = h.id AND n.version > h.version AND n.last_updated <= ?)"
        )
        params.extend((at, at))
    return (" AND ".join(clauses) or "1"), params


def history(conn: sqlite3.Connection, query: HistoryQuery) -> HistoryPage:
    """Versions newest first (by change sequence), keyset-paged on ``seq``."""
    where, params = _history_where(query)
    page_where, page_params = where, list(params)
    if query.before_seq is not None:
        page_where += " AND h.seq < ?"
        page_params.append(query.before_seq)
    rows = conn.execute(
        f"SELECT h.type, h.id, h.version, h.last_updated, h.method, h.body, h.seq "
        f"FROM history h WHERE {page_where} ORDER BY h.seq DESC LIMIT ?",
        (*page_params, query.count + 1),
    ).fetchall()
    total = conn.execute(f"SELECT count(*) FROM history h WHERE {where}", params).fetchone()[0]
    versions = [_version_from_row(row) for row in rows[: query.count]]
    next_before = versions[-1].seq if len(rows) > query.count and versions else None
    return HistoryPage(versions, total, next_before)


def changes(
    conn: sqlite3.Connection, after_seq: int, limit: int, resource_type: str | None = None
) -> list[StoredVersion]:
    if resource_type is None:
        sql = f"SELECT {_VERSION_COLUMNS} FROM history WHERE seq > ? ORDER BY seq LIMIT ?"
        rows = conn.execute(sql, (after_seq, limit)).fetchall()
    else:  # served by history_type_seq
        sql = (
            f"SELECT {_VERSION_COLUMNS} FROM history WHERE type = ? AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        rows = conn.execute(sql, (resource_type, after_seq, limit)).fetchall()
    return [_version_from_row(row) for row in rows]
