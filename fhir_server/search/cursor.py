"""Keyset paging cursors, one format for every backend.

A cursor carries the direction, the sort it was made for (a cursor from another
search is refused) and the boundary row's sort keys followed by its key.
See https://hl7.org/fhir/R4/http.html#paging
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import SearchQuery


@dataclass(frozen=True, slots=True)
class Cursor:
    forward: bool
    values: tuple[Any, ...]  # the boundary row's sort keys, then its key


def signature(query: SearchQuery) -> str:
    return ",".join(("-" if k.descending else "") + k.param for k in query.sort)


def encode_cursor(forward: bool, query: SearchQuery, values: tuple[Any, ...]) -> str:
    raw = json.dumps(["n" if forward else "p", signature(query), list(values)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, query: SearchQuery, width: int) -> Cursor:
    """The cursor ``text`` for ``query`` with ``width`` sort keys; 400 if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        direction, sig, values = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidSearch("Malformed paging cursor") from exc
    if direction not in ("n", "p") or sig != signature(query) or not isinstance(values, list):
        raise InvalidSearch("Paging cursor does not belong to this search")
    if len(values) != width + 1:
        raise InvalidSearch("Malformed paging cursor")
    return Cursor(direction == "n", tuple(values))
