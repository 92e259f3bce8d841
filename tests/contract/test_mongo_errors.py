"""The MongoDB adapter's table of driver failures (``fhir_server.storage.mongo.errors``),
in each sub-store: what a client cannot fix by retrying (a resource or record too
large for one document, a value BSON cannot hold) is its request's fault (413,
422), never a 500 nor a 503; availability failures, timeouts included, are 503.
Failures are injected where the driver would raise them.
"""

from __future__ import annotations

from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from fhir_server.errors import (
    FhirError,
    PayloadTooLarge,
    StorageUnavailable,
    UnprocessableEntity,
)
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.auth_port import ClientRecord
from fhir_server.storage.mongo.errors import duplicate_key
from fhir_server.storage.mongo.journal import UnitOfWork
from fhir_server.storage.mongo.store import DEFAULT_TIMEOUT_MS, MongoStore

from .conftest import at, resource_version
from .test_dicom_index import record
from .test_versions import patient

TOO_LARGE = DocumentTooLarge("BSON document too large (17000000 bytes)")
UPDATE_TOO_LARGE = OperationFailure(
    "Resulting document after update is larger than 16777216", 17419
)
# a bulk write whose one write the server refused as too large, and one whose writes
# were applied on the primary but not acknowledged by a majority in time
BULK_TOO_LARGE = BulkWriteError(
    {"writeErrors": [{"index": 0, "code": 10334, "errmsg": "BSONObjectTooLarge"}]}
)
BULK_NOT_REPLICATED = BulkWriteError(
    {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "waiting timed out"}]}
)
DRIVER_FAILURES: list[tuple[Exception, type[FhirError]]] = [
    (TOO_LARGE, PayloadTooLarge),
    (UPDATE_TOO_LARGE, PayloadTooLarge),
    (BULK_TOO_LARGE, PayloadTooLarge),
    (BULK_NOT_REPLICATED, StorageUnavailable),
    (OverflowError("MongoDB can only handle up to 8-byte ints"), UnprocessableEntity),
    (AutoReconnect("primary stepped down"), StorageUnavailable),
    (ExecutionTimeout("operation exceeded time limit", 50), StorageUnavailable),
    (WTimeoutError("waiting for replication timed out", 64), StorageUnavailable),
    (NetworkTimeout("timed out"), StorageUnavailable),
    (ServerSelectionTimeoutError("no primary"), StorageUnavailable),
]


def _name(value: object) -> str:
    return value.__name__ if isinstance(value, type) else type(value).__name__


@pytest.fixture
async def store(registry: SearchRegistry) -> MongoStore:
    made = MongoStore(AsyncMongoMockClient(), "radhub_errors", registry)
    await made.start()
    return made


def raising(error: Exception) -> Any:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fail


def _bulk(*codes: int) -> BulkWriteError:
    errors = [{"index": i, "code": code, "errmsg": "refused"} for i, code in enumerate(codes)]
    return BulkWriteError({"writeErrors": errors})


@pytest.mark.parametrize(
    ("error", "duplicate"),
    [
        (DuplicateKeyError("E11000 duplicate key error"), True),
        (_bulk(11000), True),
        (_bulk(11000, 11000), True),
        (_bulk(11000, 10334), False),  # not only a duplicate: the other refusal stands
        (BULK_NOT_REPLICATED, False),
        (  # refused one write; what it applied may not be on a majority
            BulkWriteError(
                {
                    "writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000"}],
                    "writeConcernErrors": [{"code": 64, "errmsg": "waiting timed out"}],
                }
            ),
            False,
        ),
        (AutoReconnect("primary stepped down"), False),
    ],
)
def test_a_duplicate_key_is_told_apart_in_a_bulk_write_too(
    error: Exception, duplicate: bool
) -> None:
    assert duplicate_key(error) is duplicate


@pytest.mark.parametrize(("error", "mapped"), DRIVER_FAILURES, ids=_name)
async def test_a_resource_write(
    store: MongoStore,
    registry: SearchRegistry,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    mapped: type[FhirError],
) -> None:
    """Mapped, and nothing of the unit of work stays."""
    monkeypatch.setattr(UnitOfWork, "_apply", raising(error))
    with pytest.raises(mapped) as caught:
        await store.write_many([resource_version(registry, patient("p1"), 1, at(1))])
    assert type(caught.value) is mapped
    monkeypatch.undo()
    assert await store.read("Patient", "p1") is None


async def test_a_transaction_whose_journal_outgrows_a_document(
    store: MongoStore, registry: SearchRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses the ``$push`` that would make the journal larger than 16 MiB
    (a transaction of many large resources): the transaction is too large, not a fault."""
    real = UnitOfWork._record
    calls = 0

    async def record_twice(self: UnitOfWork, entries: list[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise UPDATE_TOO_LARGE
        await real(self, entries)

    monkeypatch.setattr(UnitOfWork, "_record", record_twice)
    with pytest.raises(PayloadTooLarge):
        async with store.transaction() as tx:
            await tx.write(resource_version(registry, patient("p1"), 1, at(1)))
            await tx.write(resource_version(registry, patient("p2"), 1, at(1)))
    assert await store.read("Patient", "p1") is None


@pytest.mark.parametrize(("error", "mapped"), DRIVER_FAILURES, ids=_name)
async def test_an_auth_record_write(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch, error: Exception, mapped: type[FhirError]
) -> None:
    collection = type(store._db["auth_clients"])
    monkeypatch.setattr(collection, "replace_one", raising(error))
    monkeypatch.setattr(collection, "insert_one", raising(error))
    monkeypatch.setattr(collection, "update_one", raising(error))
    with pytest.raises(mapped):
        await store.auth.put_client(ClientRecord("app", "public"))


@pytest.mark.parametrize(("error", "mapped"), DRIVER_FAILURES, ids=_name)
async def test_the_dicom_index(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch, error: Exception, mapped: type[FhirError]
) -> None:
    """Reads and writes alike (a QIDO or WADO-RS request gets a 503, not a 500)."""
    await store.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.1")])
    collection = type(store._db["dicom_instances"])
    for name in ("find_one", "replace_one", "update_one"):
        monkeypatch.setattr(collection, name, raising(error))

    def find(*args: Any, **kwargs: Any) -> Any:  # a cursor's first batch fails at once
        raise error

    monkeypatch.setattr(collection, "find", find)
    with pytest.raises(mapped):
        await store.dicom.instance_files("1.1")
    with pytest.raises(mapped):
        await store.dicom.store_batch([record("1.1", "1.1.1", "1.1.1.2")])


@pytest.mark.parametrize(
    ("query", "timeout", "wtimeout"),
    [
        ("", DEFAULT_TIMEOUT_MS / 1000, None),
        ("?timeoutMS=5000", 5.0, None),
        ("?replicaSet=rs0&wtimeoutMS=2000", None, 2000),
    ],
)
async def test_every_operation_is_bounded_unless_the_uri_says_otherwise(
    registry: SearchRegistry, query: str, timeout: float | None, wtimeout: int | None
) -> None:
    """A write waiting for a majority that cannot answer would otherwise hang for ever
    (holding the write lock); bounded, it fails as a timeout, a 503 (above)."""
    store = MongoStore.from_uri(f"mongodb://127.0.0.1:9/radhub{query}", registry)
    try:
        options = store._client.options
        assert options.timeout == timeout
        assert options.write_concern.document == {"w": "majority", "j": True} | (
            {"wtimeout": wtimeout} if wtimeout else {}
        )
    finally:
        await store.close()
