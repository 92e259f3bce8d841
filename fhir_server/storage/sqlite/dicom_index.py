"""The DICOM index on SQLite: tables beside the FHIR ones in the same file.

``dicom_study``, ``dicom_series`` and ``dicom_instance`` hold one row per
entity (attributes and precomputed metadata as JSON bytes, aggregates as
columns); ``dicom_key`` holds the match keys of every row, indexed on
``(level, key, value)`` so every QIDO filter is an index range lookup (see
``dicom_search``). A batch is one ``BEGIN IMMEDIATE`` … ``COMMIT`` on the
store's single writer connection, durable before acknowledged (group commit).
A study or series row takes in each instance by ``dicom_merge``, under that
transaction: read once per batch, written only when the merge changes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from fhir_server.storage.dicom_merge import canonical_keys, merge
from fhir_server.storage.dicom_port import (
    MODALITIES_KEY,
    BlobLocation,
    Deleted,
    DicomLevel,
    DicomPage,
    DicomQuery,
    InstanceFile,
    InstanceRecord,
    InstanceRow,
    KeyDeriver,
    MatchKeys,
    SeriesRow,
    StoreResult,
    StudyRow,
)
from fhir_server.storage.sqlite import dicom_search
from fhir_server.storage.sqlite.bulk import insert_rows
from fhir_server.storage.sqlite.dicom_rekey import keys_version, rekey_chunk, set_keys_version
from fhir_server.storage.sqlite.dicom_search import INSTANCE_COLS, instance_row, study_row

if TYPE_CHECKING:
    from fhir_server.storage.sqlite.store import SqliteStore

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dicom_study (
        pk INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, attrs BLOB NOT NULL,
        modalities TEXT NOT NULL DEFAULT '', n_series INTEGER NOT NULL DEFAULT 0,
        n_instances INTEGER NOT NULL DEFAULT 0, patient_ref TEXT,
        rev INTEGER NOT NULL DEFAULT 0, synced_rev INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS dicom_study_patient ON dicom_study(patient_ref, uid)",
    """CREATE TABLE IF NOT EXISTS dicom_series (
        pk INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, study_pk INTEGER NOT NULL,
        attrs BLOB NOT NULL, modality TEXT, n_instances INTEGER NOT NULL DEFAULT 0,
        rev INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS dicom_series_study ON dicom_series(study_pk, uid)",
    """CREATE TABLE IF NOT EXISTS dicom_instance (
        pk INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, series_pk INTEGER NOT NULL,
        study_pk INTEGER NOT NULL, attrs BLOB NOT NULL, metadata BLOB NOT NULL,
        blob_key TEXT NOT NULL, blob_size INTEGER NOT NULL, blob_sha256 TEXT NOT NULL,
        ts TEXT NOT NULL, inst_no INTEGER, extra BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dicom_instance_series ON dicom_instance(series_pk, inst_no, uid)",
    "CREATE INDEX IF NOT EXISTS dicom_instance_study ON dicom_instance(study_pk)",
    """CREATE TABLE IF NOT EXISTS dicom_key (
        level TEXT NOT NULL, pk INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dicom_key_lookup ON dicom_key(level, key, value, pk)",
    "CREATE INDEX IF NOT EXISTS dicom_key_owner ON dicom_key(level, pk)",
    # what the match keys were derived by (``rekey``)
    "CREATE TABLE IF NOT EXISTS dicom_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


# columns added since the table was first made: (table, column, definition)
ADDED_COLUMNS = (
    ("dicom_study", "rev", "INTEGER NOT NULL DEFAULT 0"),
    ("dicom_study", "synced_rev", "INTEGER NOT NULL DEFAULT 0"),
    ("dicom_study", "patient_key", "TEXT"),
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the DICOM tables and indexes if they are missing, and the columns
    an index made by an earlier version lacks."""
    for statement in SCHEMA:
        conn.execute(statement)
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _set_keys(conn: sqlite3.Connection, level: str, pk: int, keys: MatchKeys) -> None:
    conn.execute("DELETE FROM dicom_key WHERE level = ? AND pk = ?", (level, pk))
    rows = [(level, pk, k, v) for k, v in dict.fromkeys(keys)]
    insert_rows(conn, "INSERT INTO dicom_key(level, pk, key, value)", rows)


def _stored_keys(conn: sqlite3.Connection, level: str, pk: int) -> MatchKeys:
    """A row's own match keys (a study's ModalitiesInStudy is the index's aggregate)."""
    rows = conn.execute(
        "SELECT key, value FROM dicom_key WHERE level = ? AND pk = ? AND key != ?",
        (level, pk, MODALITIES_KEY),
    )
    return canonical_keys((str(k), str(v)) for k, v in rows)


@dataclass(slots=True)
class _Row:
    """A study or series row as the batch has left it, by uid (``Written``).

    ``received`` is the last record's own state (attributes, keys and the rest) that
    was merged into it: the next record of the batch with the same state -- the usual
    case, a batch being one study's instances -- would change nothing (a merge is
    idempotent), so it is let through without a look. ``state`` is what the row holds
    (merged attributes and keys, and the rest): a record whose merge comes to it
    writes nothing either.
    """

    pk: int
    received: tuple[Any, ...] | None
    state: tuple[Any, ...]


Written = dict[str, _Row]


def _stored_row(
    conn: sqlite3.Connection, level: Literal["study", "series"], uid: str, rest: str
) -> _Row | None:
    """The stored study or series row, or None: (attrs, keys, *the ``rest`` columns)."""
    found = conn.execute(
        f"SELECT pk, attrs, {rest} FROM dicom_{level} WHERE uid = ?", (uid,)
    ).fetchone()
    if found is None:
        return None
    pk = int(found[0])
    return _Row(pk, None, (orjson.loads(found[1]), _stored_keys(conn, level, pk), *found[2:]))


def _upsert_study(conn: sqlite3.Connection, rec: InstanceRecord, written: Written) -> int:
    received = (rec.study_attrs, rec.study_keys, rec.patient_ref, rec.patient_key)
    row = written.get(rec.study_uid)
    if row is not None and row.received == received:
        return row.pk
    row = row or _stored_row(conn, "study", rec.study_uid, "patient_ref, patient_key")
    if row is None:
        cur = conn.execute(
            "INSERT INTO dicom_study(uid, attrs, patient_ref, patient_key) VALUES (?, ?, ?, ?)",
            (rec.study_uid, _dumps(rec.study_attrs), rec.patient_ref, rec.patient_key),
        )
        pk = int(cur.lastrowid or 0)
        keys = canonical_keys(rec.study_keys)
        _set_keys(conn, "study", pk, keys)
        state = (rec.study_attrs, keys, rec.patient_ref, rec.patient_key)
        written[rec.study_uid] = _Row(pk, received, state)
        return pk
    attrs, keys, patient_ref, patient_key = row.state
    attrs, keys = merge(attrs, keys, rec.study_attrs, rec.study_keys)
    if rec.patient_ref is not None:  # (a study's patient is set once its sync found it)
        patient_ref = rec.patient_ref
    if patient_key is None:  # a study indexed before the key was kept takes the first
        patient_key = rec.patient_key
    state = (attrs, keys, patient_ref, patient_key)
    if state[0] != row.state[0] or state[2:] != row.state[2:]:
        conn.execute(
            "UPDATE dicom_study SET attrs = ?, patient_ref = ?, patient_key = ? WHERE pk = ?",
            (_dumps(attrs), state[2], state[3], row.pk),
        )
    if keys != row.state[1]:
        _set_keys(conn, "study", row.pk, keys)
    written[rec.study_uid] = _Row(row.pk, received, state)
    return row.pk


def _other_patient(conn: sqlite3.Connection, rec: InstanceRecord, written: Written) -> bool:
    """True when the study is indexed for another patient than the instance names."""
    done = written.get(rec.study_uid)
    if done is not None:
        known = done.state[3]  # the study's patient key, as _upsert_study left it
    else:
        sql = "SELECT patient_key FROM dicom_study WHERE uid = ?"
        row = conn.execute(sql, (rec.study_uid,)).fetchone()
        known = None if row is None else row[0]
    return known is not None and known != rec.patient_key


def _series_elsewhere(conn: sqlite3.Connection, rec: InstanceRecord) -> bool:
    """True when the series UID is already indexed under another study."""
    row = conn.execute(
        "SELECT st.uid FROM dicom_series se JOIN dicom_study st ON st.pk = se.study_pk "
        "WHERE se.uid = ?",
        (rec.series_uid,),
    ).fetchone()
    return row is not None and row[0] != rec.study_uid


def _upsert_series(
    conn: sqlite3.Connection, rec: InstanceRecord, study_pk: int, written: Written
) -> int:
    """The series row of ``rec``, inserted or merged into (``_series_elsewhere`` has
    refused a series of another study, so a stored one is ``study_pk``'s)."""
    received = (rec.series_attrs, rec.series_keys, rec.modality)
    row = written.get(rec.series_uid)
    if row is not None and row.received == received:
        return row.pk
    row = row or _stored_row(conn, "series", rec.series_uid, "modality")
    if row is None:
        cur = conn.execute(
            "INSERT INTO dicom_series(uid, study_pk, attrs, modality) VALUES (?, ?, ?, ?)",
            (rec.series_uid, study_pk, _dumps(rec.series_attrs), rec.modality),
        )
        pk = int(cur.lastrowid or 0)
        keys = canonical_keys(rec.series_keys)
        _set_keys(conn, "series", pk, keys)
        written[rec.series_uid] = _Row(pk, received, (rec.series_attrs, keys, rec.modality))
        return pk
    attrs, keys, modality = row.state
    attrs, keys = merge(attrs, keys, rec.series_attrs, rec.series_keys)
    state = (attrs, keys, rec.modality or modality)
    if state[0] != row.state[0] or state[2] != row.state[2]:
        conn.execute(
            "UPDATE dicom_series SET attrs = ?, modality = ? WHERE pk = ?",
            (_dumps(attrs), state[2], row.pk),
        )
    if keys != row.state[1]:
        _set_keys(conn, "series", row.pk, keys)
    written[rec.series_uid] = _Row(row.pk, received, state)
    return row.pk


def _existing(conn: sqlite3.Connection, sop_uid: str) -> tuple[int, str, str, int, int] | None:
    row = conn.execute(
        "SELECT pk, blob_key, blob_sha256, blob_size, series_pk FROM dicom_instance WHERE uid = ?",
        (sop_uid,),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1], row[2], int(row[3]), int(row[4]))


def _store_one(
    conn: sqlite3.Connection,
    rec: InstanceRecord,
    overwrite: bool,
    touched: set[int],
    written: tuple[Written, Written],
) -> StoreResult:
    old = _existing(conn, rec.sop_uid)
    if old is not None and old[2] == rec.blob.sha256:
        return StoreResult(rec.sop_uid, "duplicate")
    if (old is not None and not overwrite) or _series_elsewhere(conn, rec):
        return StoreResult(rec.sop_uid, "conflict")
    if _other_patient(conn, rec, written[0]):
        return StoreResult(rec.sop_uid, "other-patient")
    study_pk = _upsert_study(conn, rec, written[0])
    series_pk = _upsert_series(conn, rec, study_pk, written[1])
    previous = None
    if old is not None:
        previous = BlobLocation(old[1], old[3], old[2])
        _delete_instance_pk(conn, old[0])
        touched.add(old[4])
    cur = conn.execute(
        f"INSERT INTO dicom_instance({INSTANCE_COLS_INSERT}) VALUES ({_PLACEHOLDERS})",
        (
            rec.sop_uid, series_pk, study_pk, _dumps(rec.instance_attrs), rec.metadata,
            rec.blob.key, rec.blob.size, rec.blob.sha256, rec.transfer_syntax_uid,
            rec.instance_number, _dumps(rec.extra),
        ),
    )  # fmt: skip
    _set_keys(conn, "instance", int(cur.lastrowid or 0), rec.instance_keys)
    touched.add(series_pk)
    return StoreResult(rec.sop_uid, "replaced" if previous else "stored", previous)


INSTANCE_COLS_INSERT = (
    "uid, series_pk, study_pk, attrs, metadata, blob_key, blob_size, blob_sha256, ts, inst_no, "
    "extra"
)
_PLACEHOLDERS = ", ".join("?" * 11)


def _delete_instance_pk(conn: sqlite3.Connection, pk: int) -> None:
    conn.execute("DELETE FROM dicom_key WHERE level = 'instance' AND pk = ?", (pk,))
    conn.execute("DELETE FROM dicom_instance WHERE pk = ?", (pk,))


def _refresh(conn: sqlite3.Connection, series_pks: set[int]) -> None:
    """Recount touched series and their studies; drop the ones left empty."""
    study_pks: set[int] = set()
    for pk in series_pks:
        row = conn.execute("SELECT study_pk FROM dicom_series WHERE pk = ?", (pk,)).fetchone()
        if row is None:
            continue
        study_pks.add(int(row[0]))
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM dicom_instance WHERE series_pk = ?", (pk,)
        ).fetchone()
        if count == 0:
            conn.execute("DELETE FROM dicom_key WHERE level = 'series' AND pk = ?", (pk,))
            conn.execute("DELETE FROM dicom_series WHERE pk = ?", (pk,))
        else:
            conn.execute(
                "UPDATE dicom_series SET n_instances = ?, rev = rev + 1 WHERE pk = ?", (count, pk)
            )
    for pk in study_pks:
        _refresh_study(conn, pk)


def _refresh_study(conn: sqlite3.Connection, pk: int) -> None:
    (n_series,) = conn.execute(
        "SELECT COUNT(*) FROM dicom_series WHERE study_pk = ?", (pk,)
    ).fetchone()
    if n_series == 0:
        conn.execute("DELETE FROM dicom_key WHERE level = 'study' AND pk = ?", (pk,))
        conn.execute("DELETE FROM dicom_study WHERE pk = ?", (pk,))
        return
    (n_instances,) = conn.execute(
        "SELECT COUNT(*) FROM dicom_instance WHERE study_pk = ?", (pk,)
    ).fetchone()
    modalities = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT modality FROM dicom_series WHERE study_pk = ? AND modality IS NOT NULL"
            " ORDER BY modality",
            (pk,),
        )
    ]
    conn.execute(
        "UPDATE dicom_study SET n_series = ?, n_instances = ?, modalities = ?, rev = rev + 1"
        " WHERE pk = ?",
        (n_series, n_instances, "\\".join(modalities), pk),
    )
    conn.execute(
        "DELETE FROM dicom_key WHERE level = 'study' AND pk = ? AND key = ?", (pk, MODALITIES_KEY)
    )
    rows = [("study", pk, MODALITIES_KEY, m) for m in modalities]
    insert_rows(conn, "INSERT INTO dicom_key(level, pk, key, value)", rows)


def store_batch(
    conn: sqlite3.Connection, records: Sequence[InstanceRecord], overwrite: bool
) -> list[StoreResult]:
    """Index ``records`` in one transaction (see ``DicomIndex.store_batch``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        touched: set[int] = set()
        written: tuple[Written, Written] = ({}, {})  # studies, series
        results = [_store_one(conn, rec, overwrite, touched, written) for rec in records]
        _refresh(conn, touched)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return results


def _scope_where(study: str, series: str | None, sop: str | None) -> tuple[str, list[Any]]:
    where = ["st.uid = ?"]
    args: list[Any] = [study]
    if series is not None:
        where.append("se.uid = ?")
        args.append(series)
    if sop is not None:
        where.append("i.uid = ?")
        args.append(sop)
    return " AND ".join(where), args


_INSTANCE_FROM = (
    "FROM dicom_instance i JOIN dicom_series se ON se.pk = i.series_pk "
    "JOIN dicom_study st ON st.pk = i.study_pk"
)
_INSTANCE_ORDER = "ORDER BY se.uid, i.inst_no IS NULL, i.inst_no, i.uid"


def select_instances(
    conn: sqlite3.Connection, study: str, series: str | None, sop: str | None
) -> list[InstanceRow]:
    where, args = _scope_where(study, series, sop)
    sql = f"SELECT {INSTANCE_COLS} {_INSTANCE_FROM} WHERE {where} {_INSTANCE_ORDER}"
    return [instance_row(r) for r in conn.execute(sql, args)]


def select_instance_files(
    conn: sqlite3.Connection, study: str, series: str | None, sop: str | None
) -> list[InstanceFile]:
    where, args = _scope_where(study, series, sop)
    sql = (
        "SELECT i.uid, se.uid, st.uid, i.blob_key, i.blob_size, i.blob_sha256, i.ts "
        f"{_INSTANCE_FROM} WHERE {where} {_INSTANCE_ORDER}"
    )
    return [
        InstanceFile(r[0], r[1], r[2], BlobLocation(r[3], int(r[4]), r[5]), r[6])
        for r in conn.execute(sql, args)
    ]


def select_metadata(
    conn: sqlite3.Connection, study: str, series: str | None, sop: str | None
) -> list[bytes]:
    where, args = _scope_where(study, series, sop)
    sql = f"SELECT i.metadata {_INSTANCE_FROM} WHERE {where} {_INSTANCE_ORDER}"
    return [bytes(r[0]) for r in conn.execute(sql, args)]


def select_study(conn: sqlite3.Connection, uid: str) -> StudyRow | None:
    row = conn.execute(
        f"SELECT {dicom_search.STUDY_COLS} FROM dicom_study st WHERE st.uid = ?", (uid,)
    ).fetchone()
    return None if row is None else study_row(row)


def select_series_of(conn: sqlite3.Connection, study: str) -> list[SeriesRow]:
    sql = (
        f"SELECT {dicom_search.SERIES_COLS} FROM dicom_series se "
        "JOIN dicom_study st ON st.pk = se.study_pk WHERE st.uid = ? ORDER BY se.uid"
    )
    return [dicom_search.series_row(r) for r in conn.execute(sql, (study,))]


def set_patient(
    conn: sqlite3.Connection, study: str, patient_ref: str | None, patient_key: str | None
) -> None:
    conn.execute(
        "UPDATE dicom_study SET patient_ref = ? WHERE uid = ? AND patient_key IS ?",
        (patient_ref, study, patient_key),
    )


def mark_synced(conn: sqlite3.Connection, study: str, revision: int) -> None:
    conn.execute(
        "UPDATE dicom_study SET synced_rev = MAX(synced_rev, ?) WHERE uid = ?", (revision, study)
    )


def delete(conn: sqlite3.Connection, study: str, series: str | None, sop: str | None) -> Deleted:
    """Remove the instances in scope in one transaction, then recount."""
    where, args = _scope_where(study, series, sop)
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            f"SELECT i.pk, i.blob_key, i.blob_size, i.blob_sha256, i.series_pk {_INSTANCE_FROM} "
            f"WHERE {where}",
            args,
        ).fetchall()
        for row in rows:
            _delete_instance_pk(conn, int(row[0]))
        _refresh(conn, {int(r[4]) for r in rows})
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    blobs = [BlobLocation(r[1], int(r[2]), r[3]) for r in rows]
    return Deleted(blobs, [study] if rows else [])


class SqliteDicomIndex:
    """The SQLite adapter of ``DicomIndex``, on the store's reader and writer threads."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def start(self) -> None:
        await self._store.run_write(create_schema)

    async def store_batch(
        self, records: Sequence[InstanceRecord], *, overwrite: bool = False
    ) -> list[StoreResult]:
        if not records:
            return []
        return await self._store.run_write(store_batch, records, overwrite)

    async def study(self, study_uid: str) -> StudyRow | None:
        return await self._store.run_read(select_study, study_uid)

    async def series_of(self, study_uid: str) -> list[SeriesRow]:
        return await self._store.run_read(select_series_of, study_uid)

    async def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRow]:
        return await self._store.run_read(select_instances, study_uid, series_uid, sop_uid)

    async def instance_files(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        return await self._store.run_read(select_instance_files, study_uid, series_uid, sop_uid)

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[bytes]:
        return await self._store.run_read(select_metadata, study_uid, series_uid, sop_uid)

    async def search(self, query: DicomQuery) -> DicomPage:
        return await self._store.run_read(dicom_search.search, query)

    async def set_patient(
        self, study_uid: str, patient_ref: str | None, patient_key: str | None
    ) -> None:
        await self._store.run_write(set_patient, study_uid, patient_ref, patient_key)

    async def mark_synced(self, study_uid: str, revision: int) -> None:
        await self._store.run_write(mark_synced, study_uid, revision)

    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> Deleted:
        return await self._store.run_write(delete, study_uid, series_uid, sop_uid)

    async def rekey(self, version: str, derive: KeyDeriver, levels: Sequence[DicomLevel]) -> int:
        if await self._store.run_read(keys_version) == version:
            return 0
        done = 0
        for level in levels:
            after = 0
            while (
                chunk := await self._store.run_write(rekey_chunk, level, after, derive)
            ) is not None:
                after, count = chunk
                done += count
        await self._store.run_write(set_keys_version, version)
        return done
