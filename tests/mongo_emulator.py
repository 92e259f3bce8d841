"""mongomock-motor's emulator, brought level with the PyMongo the adapter runs on.

PyMongo 4.11 added ``sort`` to ``ReplaceOne`` and ``UpdateOne``, and passes it to
the bulk builder of the collection; mongomock 4.3 (its latest) predates it, so
``bulk_write`` with either fails there with a ``TypeError`` before doing anything.
The adapter never sorts a bulk write: the emulator's builder is given a ``sort``
parameter that must be None, and is otherwise what it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from mongomock.collection import BulkOperationBuilder


def _without_sort(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("the emulator cannot sort a bulk write")
        return method(self, *args, **kwargs)

    return call


def accept_bulk_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the emulator's bulk builder take PyMongo's ``sort=None`` (see the docstring)."""
    for name in ("add_replace", "add_update"):
        monkeypatch.setattr(
            BulkOperationBuilder, name, _without_sort(getattr(BulkOperationBuilder, name))
        )
