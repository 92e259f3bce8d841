"""A transaction's writes on the embedded store: runs of new resources go in
set-wise, everything else one by one, and the result is the same as one by one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from fhir_server.errors import VersionConflict
from fhir_server.search.registry import SearchRegistry
from fhir_server.search.values import IndexEntry, StringValue
from fhir_server.storage.base import NewVersion
from fhir_server.storage.sqlite.store import SqliteStore

REGISTRY = SearchRegistry.load()
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def version(id: str, n: int, family: str) -> NewVersion:
    body = orjson.dumps({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
    index = [IndexEntry("family", StringValue(family.lower(), family))]
    return NewVersion("Patient", id, n, T0, "create" if n == 1 else "update", body, index)


async def test_mixed_runs_keep_order_versions_and_index(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    try:
        async with store.transaction() as tx:
            for v in [
                version("a", 1, "Ash"),
                version("b", 1, "Birch"),
                version("a", 2, "Alder"),  # an update between runs of creates
                version("c", 1, "Cedar"),
                version("d", 1, "Dogwood"),
            ]:
                await tx.write(v)
        seqs = [v.seq for v in tx.stored]
        assert [(v.id, v.version) for v in tx.stored] == [
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("c", 1),
            ("d", 1),
        ]
        assert seqs == list(range(seqs[0], seqs[0] + 5))  # type: ignore[operator]
        changes = await store.changes(0)
        assert [(c.id, c.version, c.seq) for c in changes] == [
            (v.id, v.version, v.seq) for v in tx.stored
        ]
        found = await store.read("Patient", "a")
        assert found is not None and found.version == 2
        for family, expected in [("alder", 1), ("ash", 0), ("cedar", 1)]:
            count = await store.run_read(
                lambda conn, f=family: conn.execute(
                    "SELECT count(*) FROM search_string WHERE param = 'family' AND norm = ?", (f,)
                ).fetchone()[0]
            )
            assert count == expected, family
    finally:
        await store.close()


async def test_creating_what_exists_is_a_version_conflict_and_writes_nothing(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    try:
        async with store.transaction() as tx:
            await tx.write(version("a", 1, "Ash"))
        with pytest.raises(VersionConflict):
            async with store.transaction() as tx:
                await tx.write(version("z", 1, "Zelkova"))
                await tx.write(version("a", 1, "Again"))
        assert await store.read("Patient", "z") is None
        assert len(await store.changes(0)) == 1
    finally:
        await store.close()
