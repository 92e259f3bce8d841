"""The SQLite DICOM index opens an index made by an earlier version: the study
table gains its revision columns and its patient key, its rows kept (counted as synced,
of no patient key yet: the next instance of the study sets it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fhir_server.storage.sqlite.dicom_index import create_schema, select_study

EARLIER_STUDY_TABLE = """CREATE TABLE dicom_study (
    pk INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, attrs BLOB NOT NULL,
    modalities TEXT NOT NULL DEFAULT '', n_series INTEGER NOT NULL DEFAULT 0,
    n_instances INTEGER NOT NULL DEFAULT 0, patient_ref TEXT)"""


def test_an_earlier_study_table_gains_the_columns_added_since(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.execute(EARLIER_STUDY_TABLE)
    conn.execute(
        "INSERT INTO dicom_study(uid, attrs, modalities, n_series, n_instances, patient_ref)"
        " VALUES ('1.2', '{}', 'CT', 1, 3, 'p1')"
    )
    create_schema(conn)
    create_schema(conn)  # and again, as every start does: nothing more to add
    columns = [row[1] for row in conn.execute("PRAGMA table_info(dicom_study)")]
    assert columns[-3:] == ["rev", "synced_rev", "patient_key"]
    study = select_study(conn, "1.2")
    assert study is not None
    assert (study.instance_count, study.patient_ref) == (3, "p1")
    assert (study.revision, study.synced_revision) == (0, 0)
    assert conn.execute("SELECT patient_key FROM dicom_study").fetchall() == [(None,)]
