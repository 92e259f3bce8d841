"""Server-assigned ids: UUID version 7 (RFC 9562), valid FHIR ids, ordered by time."""

from __future__ import annotations

import re
import time
import uuid

from fhir_server.interactions.services import new_uuid

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_ids_are_version_7_uuids_in_canonical_form() -> None:
    ids = [new_uuid() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        assert FHIR_ID.fullmatch(text)


def test_ids_carry_their_creation_time_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    earlier = new_uuid()
    time.sleep(0.002)
    later = new_uuid()
    after = time.time_ns() // 1_000_000
    millis = uuid.UUID(earlier).int >> 80
    assert before <= millis <= after
    assert earlier < later  # what keeps the store's id indexes growing at their end
