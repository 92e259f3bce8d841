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
    random = os.urandom(10)  # 74 of its bits used: rand_a (12), rand_b (62)
    time_hex = (time.time_ns() // 1_000_000 & _MILLIS_MASK).to_bytes(6, "big").hex()
    rand_hex = random.hex()
    variant = "89ab"[random[2] >> 6]  # the bits 10, then two random ones
    return f"{time_hex[:8]}-{time_hex[8:]}-7{rand_hex[1:4]}-{variant}{rand_hex[5:8]}-{rand_hex[8:]}"


_MILLIS_MASK = (1 << 48) - 1


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
