"""What only the MongoDB adapter of the DICOM index has to prove: without
multi-document transactions, a batch that fails part-way loses nothing it held
and leaves no wrong aggregates. Failures are injected into the emulator's
collection; everything else is the real adapter.
"""

from __future__ import annotations

from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect

from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.mongo.dicom_search import INSTANCES
from fhir_server.storage.mongo.store import MongoStore

from .test_dicom_index import record

DB = "radhub_dicom"


@pytest.fixture
async def store(registry: SearchRegistry) -> MongoStore:
    made = MongoStore(AsyncMongoMockClient(), DB, registry)
    await made.start()
    return made


def fail_instance_writes(
    monkeypatch: pytest.MonkeyPatch, store: MongoStore, error: Exception, after: int = 0
) -> None:
    """Every write of an instance document after the first ``after`` raises ``error``."""
    collection = type(store._db[INSTANCES])
    done = 0

    def failing(name: str) -> Any:
        real = getattr(collection, name)

        async def write(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal done
            if self.name == INSTANCES:
                done += 1
                if done > after:
                    raise error
            return await real(self, *args, **kwargs)

        return write

    for name in ("insert_one", "replace_one"):
        monkeypatch.setattr(collection, name, failing(name))


async def test_a_failed_overwrite_keeps_the_stored_version(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = record("1.1", "1.1.1", "1.1.1.1")
    await store.dicom.store_batch([old])
    fail_instance_writes(monkeypatch, store, AutoReconnect("primary stepped down"))
    with pytest.raises(AutoReconnect):
        await store.dicom.store_batch(
            [record("1.1", "1.1.1", "1.1.1.1", content="v2")], overwrite=True
        )
    monkeypatch.undo()
    (row,) = await store.dicom.instance_files("1.1")
    assert row.blob == old.blob
