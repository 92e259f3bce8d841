"""What the interactions are given: built once by the composition root."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fhir_server.access.policy import AccessPolicy
from fhir_server.resources.validation_pool import ValidationPool
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.base import Store


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


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
    validation: ValidationPool = field(default_factory=lambda: ValidationPool(0))
    clock: Callable[[], datetime] = utc_now
    new_id: Callable[[], str] = new_uuid
