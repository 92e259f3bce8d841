"""Re-deriving the SQLite DICOM index's match keys from the rows' stored attributes.

``DicomIndex.rekey`` runs these: a chunk of rows per short transaction (ingest
is not held up), then the version the keys now follow, kept in ``dicom_meta``.
"""

from __future__ import annotations

import sqlite3

import orjson

from fhir_server.storage.dicom_port import MODALITIES_KEY, DicomLevel, KeyDeriver
from fhir_server.storage.sqlite.bulk import insert_rows

TABLES = {"study": "dicom_study", "series": "dicom_series", "instance": "dicom_instance"}
REKEY_CHUNK = 500


def keys_version(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM dicom_meta WHERE name = 'keys'").fetchone()
    return None if row is None else str(row[0])


def set_keys_version(conn: sqlite3.Connection, version: str) -> None:
    conn.execute(
        "INSERT INTO dicom_meta(name, value) VALUES ('keys', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (version,),
    )


def rekey_chunk(
    conn: sqlite3.Connection, level: DicomLevel, after: int, derive: KeyDeriver
) -> tuple[int, int] | None:
    """Re-key the next ``REKEY_CHUNK`` rows of ``level`` after pk ``after``, in one
    transaction (short, so ingest is not held up): the last pk and the count, or
    None when no row is left."""
    conn.execute("BEGIN IMMEDIATE")  # read under the write lock: no ingest in between
    try:
        rows = conn.execute(
            f"SELECT pk, attrs FROM {TABLES[level]} WHERE pk > ? ORDER BY pk LIMIT ?",
            (after, REKEY_CHUNK),
        ).fetchall()
        if not rows:
            conn.execute("ROLLBACK")
            return None
        for pk, attrs in rows:
            keys = [(k, v) for k, v in derive(level, orjson.loads(attrs)) if k != MODALITIES_KEY]
            # ModalitiesInStudy is the index's own aggregate, kept as it is
            conn.execute(
                "DELETE FROM dicom_key WHERE level = ? AND pk = ? AND key != ?",
                (level, pk, MODALITIES_KEY),
            )
            rows_out = [(level, pk, k, v) for k, v in dict.fromkeys(keys)]
            insert_rows(conn, "INSERT INTO dicom_key(level, pk, key, value)", rows_out)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return int(rows[-1][0]), len(rows)
