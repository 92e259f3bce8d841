"""The MongoDB adapter's one table of driver failures, and the size limit it checks.

    bson.errors.InvalidDocument                          what BSON cannot hold
    ├── pymongo.errors.DocumentTooLarge                  a document over 16 MiB
    │                                                    -> PayloadTooLarge (413)
    └── the rest                                         -> UnprocessableEntity (422)
    OverflowError (an integer beyond 64 bits)            -> UnprocessableEntity (422)
    pymongo.errors.PyMongoError
    ├── OperationFailure with a too-large code           -> PayloadTooLarge (413)
    │   (a BulkWriteError: the code of its first write error)
    └── the rest: network, timeouts, failover            -> StorageUnavailable (503)

``DocumentTooLarge`` and ``OverflowError`` are raised by PyMongo's encoder
before anything is sent, and are not ``PyMongoError``s. The server refuses a
document that an update makes too large (``$push``) with an ``OperationFailure``.
Duplicate keys mean something else in each sub-store, which maps them first
(``duplicate_key`` tells them apart, whether one write or a bulk write failed).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import bson
from bson.errors import InvalidDocument
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from fhir_server.errors import (
    FhirError,
    PayloadTooLarge,
    StorageUnavailable,
    UnprocessableEntity,
)

# MongoDB's maxBsonObjectSize: the largest document a server stores
MAX_DOCUMENT = 16 * 1024 * 1024
# BSONObjectTooLarge; "Resulting document after update is larger than ..."
_TOO_LARGE_CODES = frozenset({10334, 17419})
# what PyMongo raises DuplicateKeyError for: E11000, and two codes of older servers
_DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})
DRIVER_ERRORS = (PyMongoError, InvalidDocument, OverflowError)

P = ParamSpec("P")
R = TypeVar("R")


def _write_errors(exc: BulkWriteError) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = (exc.details or {}).get("writeErrors") or []
    return errors


def duplicate_key(exc: BaseException) -> bool:
    """Whether a unique index refused the write: for a bulk write, every write it had
    refused, and the writes it applied are as durable as asked (no write concern
    error: else what it applied may yet be rolled back, and that is an outage)."""
    if isinstance(exc, DuplicateKeyError):
        return True
    if isinstance(exc, BulkWriteError):
        errors = _write_errors(exc)
        if not errors or (exc.details or {}).get("writeConcernErrors"):
            return False
        return all(e.get("code") in _DUPLICATE_KEY_CODES for e in errors)
    return False


def translate(exc: BaseException) -> FhirError:
    """The server's error for one of ``DRIVER_ERRORS`` (see the module docstring)."""
    code = exc.code if isinstance(exc, OperationFailure) else None
    if isinstance(exc, BulkWriteError):
        code = next((e.get("code") for e in _write_errors(exc)), None)
    if isinstance(exc, DocumentTooLarge) or code in _TOO_LARGE_CODES:
        return PayloadTooLarge("too large to store: one MongoDB document holds at most 16 MiB")
    if isinstance(exc, InvalidDocument | OverflowError):
        return UnprocessableEntity(f"a value cannot be stored in MongoDB: {exc}")
    return StorageUnavailable(f"MongoDB unavailable: {exc}")


@contextmanager
def map_driver_errors() -> Iterator[None]:
    """Translate driver failures (``translate``) at the adapter's edge."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def mapped(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``method`` with its driver failures translated (``map_driver_errors``)."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with map_driver_errors():
            return await method(*args, **kwargs)

    return call


def unstorable(*docs: dict[str, Any]) -> str | None:
    """Why MongoDB could not store ``docs`` (each one document), or None: checked
    before anything is written, as the emulator checks neither size nor range."""
    for doc in docs:
        try:
            size = len(bson.encode(doc))
        except OverflowError:
            return "it holds an integer beyond 64 bits, which this archive's index cannot hold"
        except InvalidDocument:
            return "this archive's index cannot hold one of its values"
        if size > MAX_DOCUMENT:
            mib = size / 1024 / 1024
            return f"too large for this archive's index: {mib:.1f} MiB of attributes, at most 16"
    return None
