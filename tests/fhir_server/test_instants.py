"""``meta.lastUpdated`` and the other instants the server writes: UTC, microseconds, Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_server.resources.meta import format_instant


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 12, 1, 1, 2, 3, 4, tzinfo=UTC), "2026-12-01T01:02:03.000004Z"),
        (datetime(2026, 12, 1, 1, 2, 3, tzinfo=UTC), "2026-12-01T01:02:03.000000Z"),
        # another offset is converted, not relabelled
        (
            datetime(2026, 12, 1, 1, 2, 3, 500, tzinfo=timezone(timedelta(hours=2))),
            "2026-11-30T23:02:03.000500Z",
        ),
        (
            datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))),
            "2027-01-01T00:30:00.000000Z",
        ),
    ],
)
def test_format_instant(moment: datetime, text: str) -> None:
    assert format_instant(moment) == text
    assert format_instant(moment) == text  # and again, from memory
