"""Counts the commands the MongoDB adapter sends, by collection and operation.

The emulator answers in-process, so PyMongo's command monitoring sees nothing;
the collection's methods are wrapped instead. Each call counts as the commands a
server gets for it: one, or for ``bulk_write`` one per kind of write (insert;
update, replaces included; delete) -- per run of one kind when ordered, as PyMongo
splits it (``bulk_shared``); a ``find`` counts its first batch only (these tests
read small results).
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby
from typing import Any

import pytest
from pymongo import DeleteMany, DeleteOne, InsertOne

OPERATIONS = (
    "find_one", "find", "aggregate", "count_documents", "distinct", "insert_one",
    "insert_many", "replace_one", "update_one", "update_many", "delete_one", "delete_many",
    "find_one_and_update", "bulk_write",
)  # fmt: skip


def _kind(request: Any) -> str:
    if isinstance(request, InsertOne):
        return "insert"
    return "delete" if isinstance(request, DeleteOne | DeleteMany) else "update"


def commands(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    if name != "bulk_write":
        return 1
    kinds = [_kind(r) for r in kwargs.get("requests", args[0] if args else [])]
    if not kwargs.get("ordered", True):
        return len(set(kinds))
    return len([kind for kind, _ in groupby(kinds)])


def count_round_trips(monkeypatch: pytest.MonkeyPatch, client: Any) -> Counter[str]:
    """From now on, every command sent through ``client``'s collections, counted as
    ``"<collection>.<operation>"``."""
    counted: Counter[str] = Counter()
    collection = type(client["any"]["any"])
    for name in OPERATIONS:
        real = getattr(collection, name)

        def call(self: Any, *args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            if _name == "bulk_write":  # the requests may be a generator: read once
                requests = list(kwargs.pop("requests", args[0] if args else []))
                args = (requests, *args[1:])
            counted[f"{self.name}.{_name}"] += commands(_name, args, kwargs)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(collection, name, call)
    return counted
