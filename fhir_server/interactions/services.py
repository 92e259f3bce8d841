"""What the interactions are given: built once by the composition root."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fhir_server.access.policy import AccessPolicy
from fhir_server.resources.worker_pool import WorkerPool
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import Store


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    """A new resource id: a UUID version 7 (RFC 9562 §5.7), ordered by time, so that
    the store's indexes on ids grow at their end. Random (version 4) ids landed
    each insert on a random page of those indexes: once they outgrew the page
    cache, every write dirtied and logged a page per id (the audit trail writes
    one per request). Its first 48 bits are the creation time in milliseconds,
    which a first version's ``meta.lastUpdated`` shows anyway."""
    random = int.from_bytes(os.urandom(10), "big")  # 12 + 62 random bits used
    millis = time.time_ns() // 1_000_000 & _MILLIS_MASK
    value = millis << 80 | 0x7 << 76 | (random >> 62 & 0xFFF) << 64 | 0b10 << 62
    value |= random & _RAND_B_MASK
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_MILLIS_MASK = (1 << 48) - 1
_RAND_B_MASK = (1 << 62) - 1


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    default_count: int = 50
    max_count: int = 1000
    max_bundle_entries: int = 10_000


@dataclass(frozen=True)
class Services:
    """The store, the search definitions, the access policy and the FHIR base URL
    every interaction works with; ``clock`` and ``new_id`` are injectable for tests."""

    store: Store
    registry: SearchRegistry
    policy: AccessPolicy
    base_url: str
    limits: Limits = field(default_factory=Limits)
    workers: WorkerPool = field(default_factory=lambda: WorkerPool(0))
    clock: Callable[[], datetime] = utc_now
    new_id: Callable[[], str] = new_uuid
