"""The MongoDB adapter of the storage port (see ``store`` for the design)."""

from __future__ import annotations

from fhir_server.storage.mongo.store import MongoStore, MongoTransaction, map_mongo_errors

__all__ = ["MongoStore", "MongoTransaction", "map_mongo_errors"]
