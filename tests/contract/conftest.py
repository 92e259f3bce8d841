"""The ``Store`` contract suite runs on every adapter: embedded SQLite in a temp
dir, MongoDB on mongomock-motor's in-process emulator, and MongoDB on a real
server when ``RADHUB_TEST_MONGODB_URI`` is set (skipped otherwise)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fhir_server.search.extract import extract_index
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import Method, NewVersion, Store
from fhir_server.storage.mongo.store import MongoStore
from fhir_server.storage.sqlite.store import SqliteStore

MONGODB_URI_ENV = "RADHUB_TEST_MONGODB_URI"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A moment ``seconds`` after T0, with microseconds that must survive storage."""
    return T0 + timedelta(seconds=seconds, microseconds=123_457)


@dataclass
class Backend:
    """Opens stores of one adapter on the same data, so a test can restart one."""

    name: str
    open: Callable[[], Store]
    cleanup: Callable[[], Awaitable[object]] | None = None
    opened: list[Store] = field(default_factory=list)

    async def start(self) -> Store:
        store = self.open()
        await store.start()
        self.opened.append(store)
        return store


@pytest.fixture(scope="session")
def registry() -> SearchRegistry:
    return SearchRegistry.load()


def _real_mongo(registry: SearchRegistry) -> Backend:
    uri = os.environ.get(MONGODB_URI_ENV)
    if not uri:
        pytest.skip(f"{MONGODB_URI_ENV} is not set: no real MongoDB server to run against")
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, w="majority", journal=True)
    database = f"radhub_contract_{uuid.uuid4().hex[:12]}"

    async def drop() -> None:
        await client.drop_database(database)
        await client.close()

    return Backend("mongo-real", lambda: MongoStore(client, database, registry), drop)


@pytest.fixture(params=["sqlite", "mongo", "mongo-real"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, registry: SearchRegistry
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        made = Backend("sqlite", lambda: SqliteStore(tmp_path / "data", registry))
    elif request.param == "mongo":
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient()
        made = Backend("mongo", lambda: MongoStore(client, "radhub_contract", registry))
    else:
        made = _real_mongo(registry)
    yield made
    for store in made.opened:
        await store.close()
    if made.cleanup is not None:
        await made.cleanup()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.start()


def resource_version(
    registry: SearchRegistry,
    resource: dict[str, Any],
    version: int,
    when: datetime,
    method: Method | None = None,
) -> NewVersion:
    """A NewVersion of ``resource`` with its meta, body and extracted index."""
    method = method or ("create" if version == 1 else "update")
    if method == "delete":
        return NewVersion(resource["resourceType"], resource["id"], version, when, "delete", None)
    body = dict(resource, meta={"versionId": str(version), "lastUpdated": when.isoformat()})
    return NewVersion(
        resource["resourceType"],
        resource["id"],
        version,
        when,
        method,
        json.dumps(body).encode(),
        tuple(extract_index(body, registry)),
    )
