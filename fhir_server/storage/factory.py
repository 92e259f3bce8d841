"""The store a configuration asks for (the server, the command line and the
audit process each build their own)."""

from __future__ import annotations

from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import Store


def build_store(settings: Settings, registry: SearchRegistry) -> Store:
    """The embedded store by default, MongoDB when a URI is given."""
    if settings.mongodb_uri:
        from fhir_server.storage.mongo.store import MongoStore

        return MongoStore.from_uri(settings.mongodb_uri, registry)
    from fhir_server.storage.sqlite.store import SqliteStore

    return SqliteStore(settings.data_dir, registry)
